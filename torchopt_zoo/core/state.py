"""How the zoo keeps per-parameter state, as torch.optim keeps it: the dtypes of state tensors and
of the ``step`` counters. Every tier reads this policy; it names no rule and no tier."""

from __future__ import annotations

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(p: Tensor) -> torch.dtype:
    """The dtype of a parameter's state: float32 for bf16/fp16 parameters, else the parameter's."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def zeros_state(p: Tensor) -> Tensor:
    """Zero state for ``p`` (float32 for bf16/fp16 parameters), as torch.optim creates it."""
    return torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)


def scalar_dtype() -> torch.dtype:
    """The dtype of ``step``: torch.optim keeps it in float64 only when that is the default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
