"""Device and dtype choices, through ``accelerate``: bf16 on CUDA, fp32 on CPU.

    from core.devices import make_accelerator
    accelerator = make_accelerator(gradient_accumulation_steps=2)
"""

from __future__ import annotations


def pick_device(device=None):
    """``device`` if given, else CUDA when present, else CPU (as a ``torch.device``)."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device):
    """bf16 on CUDA (when supported), fp32 elsewhere."""
    import torch

    device = pick_device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def mixed_precision_for(device=None) -> str:
    """The ``accelerate`` mixed-precision mode that matches ``default_dtype``."""
    import torch

    return "bf16" if default_dtype(device) == torch.bfloat16 else "no"


def make_accelerator(gradient_accumulation_steps: int = 1, cpu: bool = False, log_with=None, project_dir=None):
    """An ``accelerate.Accelerator``: DDP under ``accelerate launch``, bf16 on CUDA, plain fp32 on CPU."""
    from accelerate import Accelerator

    return Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision="no" if cpu else mixed_precision_for(),
        cpu=cpu,
        log_with=log_with,
        project_dir=project_dir,
    )
