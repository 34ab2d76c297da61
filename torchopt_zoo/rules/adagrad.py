"""AdaGrad in every tier (Duchi, Hazan & Singer, JMLR 2011; docs/algorithms.md, "AdaGrad"), as
torch.optim.Adagrad: ``s += g^2``, ``p -= clr g / (sqrt(s) + eps)``, ``clr = lr / (1 + (t-1) lr_decay)``."""

from __future__ import annotations

import torch

from .._validation import as_float, check_range
from ..core.direction import Direction, per_step, real_view, state_tensors
from ..core.optimizer import ZooOptimizer
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..core.state import state_dtype
from ..tiers.triton import jit, tl

SUM = "sum"


def reference(group, params, grads, states, steps):
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        s = real_view(state[SUM])
        s.addcmul_(g, g, value=1)
        nums.append(g), denoms.append(s.sqrt() + group["eps"])  # out of place: differentiable=True
        coefs.append(1 / (1 + (t - 1) * group["lr_decay"]))
    return Direction(nums, denoms, coefs)


def foreach(group, params, grads, states, steps):
    s = state_tensors(states, SUM)
    torch._foreach_addcmul_(s, grads, grads, 1)
    denom = torch._foreach_sqrt(s)
    torch._foreach_add_(denom, group["eps"])
    return Direction(list(grads), denom, per_step(steps, lambda t: 1 / (1 + (t - 1) * group["lr_decay"])))


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, s_ptr, lr_decay, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    s_ptr = T.entry(s_ptr, i, TABLE, tl.float32)
    s = T.load(s_ptr, offs, mask) + g * g
    T.store(s_ptr, offs, s, mask)
    clr = lr / (1 + (tl.load(step_ptr) - 1) * lr_decay)
    T.store(p_ptr, offs, p - clr * g / (tl.sqrt(s) + eps), mask)


def launches(group, bucket, group_state):
    return [Launch(kernel, (bucket.flats[SUM],), (group["lr_decay"], group["eps"]))]


def torch_kernel(group):
    """torch's single-pass fused Adagrad (``torch._fused_adagrad_``), which knows coupled weight decay only."""
    if group["decoupled_weight_decay"] and group["weight_decay"]:
        return None

    def run(params, grads, states, steps, lr, grad_scale, found_inf):
        torch._fused_adagrad_(params, grads, [s[SUM] for s in states], steps, lr=as_float("lr", lr),
                              lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                              maximize=group["maximize"], grad_scale=grad_scale, found_inf=found_inf)
    return run


def sparse(group, p, g, state, t, lr):
    """A sparse gradient, as torch.optim.Adagrad takes it: only the gradient's rows of the sum and
    of the parameter change (``s += g^2`` there, ``p -= clr g / (sqrt(s) + eps)`` there)."""
    g = g.coalesce()
    indices, values = g._indices(), g._values()
    if values.numel() == 0:
        return

    def rows(v):
        return torch.sparse_coo_tensor(indices, v, g.shape)

    s = state[SUM]
    s.add_(rows(values.pow(2)))
    std = s.sparse_mask(g)._values().sqrt_().add_(group["eps"])
    p.add_(rows(values / std), alpha=-lr / (1 + (t - 1) * group["lr_decay"]))


CPU = CKernel("""
    const T s = S0[j] + g * g;
    S0[j] = s;
    p = p + u0 * (g / (sqrt(s) + k1));
""", (SUM,), lambda group: (group["lr_decay"], group["eps"]), "ui[0] = -lr * (1 / (1 + (t - 1) * k[0]));")

RULE = Rule("adagrad", reference, foreach, floor_bytes=20, state=(SUM,), launches=launches,
            torch_kernel=torch_kernel, sparse=sparse, cpu=CPU)


@register
class Adagrad(ZooOptimizer):
    r"""AdaGrad (Duchi, Hazan & Singer, JMLR 2011), a drop-in for ``torch.optim.Adagrad``:
    ``s += g^2``, ``p -= clr g / (sqrt(s) + eps)`` with ``clr = lr / (1 + (t-1) lr_decay)``."""

    diagonal_adaptive = True
    rule = RULE
    paper = "Duchi, Hazan & Singer 2011, JMLR 12"
    twin = torch.optim.Adagrad
    configs = [{}, {"lr_decay": 0.01, "initial_accumulator_value": 0.1}]

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, foreach=None, *, fused=None, maximize=False, capturable=False, differentiable=False,
                 decoupled_weight_decay=False,
                 line_search=None):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        foreach=foreach, fused=fused, maximize=maximize, capturable=capturable,
                        differentiable=differentiable,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("lr_decay", group["lr_decay"], 0.0)
        check_range("initial_accumulator_value", group["initial_accumulator_value"], 0.0)
        check_range("eps", group["eps"], 0.0)

    def _new_state(self, p, group):
        value = group["initial_accumulator_value"]
        if p.is_complex():  # as torch: both parts of the real view start at the value
            value = complex(value, value)
        return {SUM: torch.full_like(p, value, dtype=state_dtype(p), memory_format=torch.preserve_format)}
