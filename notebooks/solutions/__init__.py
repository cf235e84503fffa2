"""Reference solutions of the notebooks' exercises, one module per notebook (`nb01.py` for notebook 01, ...).

A notebook imports them only when its `SOLUTIONS` switch is on (set it to True in the first code cell, or run with
RLHF_WORKBENCH_SOLUTIONS=1, as the test suite does). Try each exercise before reading its solution.
"""
