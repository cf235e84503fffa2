"""Trainers, one file per algorithm: ``sft``, ``reward``, ``finegrained``, ``dpo``, ``simpo``, ``ppo``.

Each file has a flat config dataclass whose defaults run on a laptop, one
``train_*(config, on_log=None)`` function with numbered phases, and a command-line
entry point (``python -m core.trainers.dpo --help``). Shared plumbing (run
status, failures, checkpoints) lives in ``common``.
"""
