"""Device and dtype choices, through ``accelerate``: bf16 on CUDA, fp32 on CPU.

    from core.devices import make_accelerator
    accelerator = make_accelerator(gradient_accumulation_steps=2)

torch and accelerate are imported inside the functions: ``core.models`` imports this
module and stays cheap to import (tests/test_models.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys


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


def make_accelerator(gradient_accumulation_steps: int = 1, cpu: bool = False, log_with=None, project_dir=None,
                     cpu_bf16: bool = False):
    """An ``accelerate.Accelerator``: DDP under ``accelerate launch``, bf16 on CUDA, plain fp32 on CPU.

    cpu_bf16: on CPU, bf16 autocast (``torch.autocast("cpu", torch.bfloat16)`` around the
    prepared model's forward and ``accelerator.autocast()``) with fp32 weights, gradients and
    optimizer state. Training on CPU also keeps freed memory for reuse (``keep_freed_memory``).
    """
    import torch
    from accelerate import Accelerator

    precision = "no" if cpu else mixed_precision_for()
    if cpu_bf16 and (cpu or not torch.cuda.is_available()):
        precision = "bf16"
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=precision,
        cpu=cpu,
        log_with=log_with,
        project_dir=project_dir,
    )
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    return accelerator


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of handing it back to the kernel (Linux/glibc only).

    By default every allocation above the mmap threshold (activations, gradients, the
    113 MB embedding gradient) is a fresh ``mmap`` and every free an ``munmap``, so each
    training step page-faults and the kernel zero-fills the same gigabytes again: on 2 CPU
    cores a PPO minibatch of the 135M policy and critic spent ~0.9 s of 4.3 s there (3.4 s
    with this; peak RSS unchanged, docs/benchmarks.md). Here large blocks come from the heap
    (``M_MMAP_MAX`` = 0) and up to 1 GiB of free heap top is kept (``M_TRIM_THRESHOLD``).
    The cost: the process keeps its peak memory after training ends. Idempotent; returns
    whether it applied. ``RLHF_WORKBENCH_KEEP_FREED_MEMORY=0`` switches it off.
    """
    if os.environ.get("RLHF_WORKBENCH_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))
