"""RLHF Workbench core library: reward models, RLHF maths and trainers.

Importing ``core`` is cheap and has no side effects: it imports no torch, no
transformers and never Streamlit. Submodules import what they need:

    from core.losses import dpo_loss          # pure maths (torch)
    from core.models import load_causal_lm    # models (transformers, accelerate)
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
