"""What a direction rule returns, and how a tier applies it to the parameters.

A direction rule updates its state and returns the update direction of every parameter in the
factored form ``d_i = -coef_i * num_i / denom_i`` (``denom`` absent means 1). Keeping the factors
lets the plain step be a single ``addcdiv`` per tensor, as in torch.optim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Direction:
    nums: list[Tensor]
    denoms: list[Tensor] | None
    coefs: list[float] | float = 1.0

    def coef_list(self) -> list[float]:
        if isinstance(self.coefs, list):
            return self.coefs
        return [self.coefs] * len(self.nums)

    def materialise(self, step_size: float) -> list[Tensor]:
        """``step_size * d`` as new tensors (a line search moves along it)."""
        scalars = [-step_size * c for c in self.coef_list()]
        out = list(self.nums) if self.denoms is None else torch._foreach_div(self.nums, self.denoms)
        return torch._foreach_mul(out, scalars)


def inner(xs: list[Tensor], ys: list[Tensor], reduce=None) -> float:
    """``sum_i <x_i, y_i>`` (the real inner product: complex tensors as their real views),
    accumulated in float64, with one host read; ``reduce`` sums the total over the shards where
    the lists hold local shards (:func:`~torchopt_zoo.core.sharding.sum_over_shards`)."""
    if not xs:
        return 0.0
    total = torch.stack([torch.dot(real_view(x).reshape(-1).double(), real_view(y).reshape(-1).double()).cpu()
                         for x, y in zip(xs, ys)]).sum()
    return float(total if reduce is None else reduce(total))


def per_step(steps: list, fn):
    """``fn(t)`` for each parameter's step, a single float when all steps agree (the usual case);
    a list of 0-dim tensors where the steps are tensors (kept on the device: no host read)."""
    if isinstance(steps[0], Tensor):
        return [fn(t) for t in steps]
    if all(t == steps[0] for t in steps):
        return fn(steps[0])
    cache = {}
    return [cache.setdefault(t, fn(t)) for t in steps]


def one_minus_pow(beta: float, t):
    """``1 - beta ** t`` (a bias correction), for a float step or a 0-dim tensor one (computed in
    the step's dtype, as torch's capturable and compiled steps do; under ``torch.compile`` this
    scalar is recomputed next to every vector of the fused loop, where ``pow`` is cheap and
    ``expm1`` is not)."""
    return 1 - torch.pow(beta, t) if isinstance(t, Tensor) else 1 - beta ** t


def sqrt(x):
    """``sqrt`` of a float step factor, or of a 0-dim tensor one (see :func:`per_step`)."""
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


def state_tensors(states: list[dict], key: str) -> list[Tensor]:
    """The tensors stored under ``key`` in each state, complex ones as real views (as torch does)."""
    return [real_view(s[key]) for s in states]


def real_view(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def apply_reference(params: list[Tensor], d: Direction, step_size: float) -> None:
    """``p += step_size * d`` one tensor at a time."""
    denoms = d.denoms or [None] * len(params)
    for p, num, denom, coef in zip(params, d.nums, denoms, d.coef_list()):
        if denom is None:
            p.add_(num, alpha=-step_size * coef)
        else:
            p.addcdiv_(num, denom, value=-step_size * coef)


def apply_foreach(params: list[Tensor], d: Direction, step_size) -> None:
    """``p += step_size * d`` with one multi-tensor kernel; the step size and the coefficients may
    be tensors (the step then reads nothing back to the host)."""
    on_device = isinstance(d.coefs, list) and bool(d.coefs) and isinstance(d.coefs[0], Tensor)
    if on_device or isinstance(step_size, Tensor):
        scalars = [c * -step_size for c in d.coef_list()]
        if d.denoms is None:
            torch._foreach_add_(params, torch._foreach_mul(d.nums, scalars))
        else:  # the factor on the denominator (times its reciprocal: one division per element)
            torch._foreach_addcdiv_(params, d.nums, torch._foreach_mul(d.denoms, torch._foreach_reciprocal(scalars)))
    elif isinstance(d.coefs, list):
        scalars = [-step_size * c for c in d.coefs]
        if d.denoms is None:
            torch._foreach_add_(params, torch._foreach_mul(d.nums, scalars))
        else:
            torch._foreach_addcdiv_(params, d.nums, d.denoms, scalars)
    elif d.denoms is None:
        torch._foreach_add_(params, d.nums, alpha=-step_size * d.coefs)
    else:
        torch._foreach_addcdiv_(params, d.nums, d.denoms, value=-step_size * d.coefs)
