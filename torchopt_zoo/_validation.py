"""Argument checks shared by every optimizer: each error names the argument and its allowed range."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def as_float(name: str, value) -> float:
    """``value`` as a Python float; a one-element tensor is read (on the host, as torch does)."""
    if isinstance(value, torch.Tensor):
        check_one_element(name, value)
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def check_one_element(name: str, value: torch.Tensor) -> None:
    """Raise ``ValueError`` unless the tensor ``value`` holds one element (reads no data)."""
    if value.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")


def check_range(name: str, value, low: float, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = True) -> None:
    """Raise ``ValueError`` unless ``low <= value < high`` (bounds' openness as given)."""
    v = as_float(name, value)
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below and not math.isnan(v)):
        lo = "(" if low_open else "["
        hi = ")" if high_open or math.isinf(high) else "]"
        raise ValueError(f"Invalid {name} value: {value!r}; allowed range is {lo}{low}, {high}{hi}")


def check_int(name: str, value, low: int, why: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Invalid {name} value: {value!r}; allowed range is integers >= {low}{why}")


def check_flag(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is ``True`` or ``False`` (a bool, not 0/1 or a tensor)."""
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name} value: {value!r}; allowed values are True, False")


def check_betas(betas, count: int = 2, *, foreach=None, capturable: bool = False) -> None:
    """``count`` numbers in [0, 1), all floats or all one-element tensors (as torch.optim); tensors
    only where the step can keep them on the device (not with ``foreach=True`` unless ``capturable``)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"Invalid betas value: {betas!r}; expected a tuple of {count} numbers in [0, 1)")
    tensors = [isinstance(b, torch.Tensor) for b in betas]
    if any(tensors) and not all(tensors):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, b in enumerate(betas):
        if tensors[i] and foreach and not capturable:
            raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
        v = as_float(f"betas[{i}]", b)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b!r} (betas[{i}]); allowed range is [0.0, 1.0)")


def check_choice(name: str, value, choices: Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (compared as plain Python values:
    a tensor is refused by name, never compared elementwise)."""
    choices = tuple(choices)
    if isinstance(value, torch.Tensor) or value not in choices:
        raise ValueError(f"Invalid {name} value: {value!r}; allowed values are {', '.join(map(repr, choices))}")
