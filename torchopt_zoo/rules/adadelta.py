"""Adadelta in every tier (Zeiler 2012, arXiv:1212.5701; docs/algorithms.md, "Adadelta"), exactly as
torch.optim.Adadelta: ``v = rho v + (1-rho) g^2``, ``delta = sqrt(u + eps) / sqrt(v + eps) g``,
``u = rho u + (1-rho) delta^2``, ``p -= lr delta``."""

from __future__ import annotations

import torch

from .._validation import check_range
from ..core.direction import Direction, real_view, state_tensors
from ..core.optimizer import ZooOptimizer
from ..core.state import zeros_state
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl

SQUARE_AVG, ACC_DELTA = "square_avg", "acc_delta"


def reference(group, params, grads, states, steps):
    rho, eps = group["rho"], group["eps"]
    nums = []
    for g, state in zip(grads, states):
        v, u = real_view(state[SQUARE_AVG]), real_view(state[ACC_DELTA])
        v.mul_(rho).addcmul_(g, g, value=1 - rho)
        delta = u.add(eps).sqrt() / v.add(eps).sqrt() * g  # out of place: differentiable=True
        u.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        nums.append(delta)
    return Direction(nums, None, 1.0)


def foreach(group, params, grads, states, steps):
    rho, eps = group["rho"], group["eps"]
    v, u = state_tensors(states, SQUARE_AVG), state_tensors(states, ACC_DELTA)
    torch._foreach_mul_(v, rho)
    torch._foreach_addcmul_(v, grads, grads, 1 - rho)
    std = torch._foreach_add(v, eps)
    torch._foreach_sqrt_(std)
    delta = torch._foreach_add(u, eps)
    torch._foreach_sqrt_(delta)
    torch._foreach_div_(delta, std)
    torch._foreach_mul_(delta, grads)
    torch._foreach_mul_(u, rho)
    torch._foreach_addcmul_(u, delta, delta, 1 - rho)
    return Direction(delta, None, 1.0)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, v_ptr, u_ptr, rho, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    v_ptr = T.entry(v_ptr, i, TABLE, tl.float32)
    u_ptr = T.entry(u_ptr, i, TABLE, tl.float32)
    v = T.second_moment(v_ptr, offs, mask, g, rho, 0.0)
    u = T.load(u_ptr, offs, mask)
    delta = tl.sqrt(u + eps) / tl.sqrt(v + eps) * g
    T.store(u_ptr, offs, rho * u + (1 - rho) * delta * delta, mask)
    T.store(p_ptr, offs, p - lr * delta, mask)


def launches(group, bucket, group_state):
    return [Launch(kernel, (bucket.flats[SQUARE_AVG], bucket.flats[ACC_DELTA]), (group["rho"], group["eps"]))]


CPU = CKernel("""
    const T v = S0[j] * k0 + k1 * g * g;
    S0[j] = v;
    const T u = S1[j];
    const T delta = sqrt(u + k2) / sqrt(v + k2) * g;
    S1[j] = u * k0 + k1 * delta * delta;
    p = p - lr_t * delta;
""", (SQUARE_AVG, ACC_DELTA), lambda group: (group["rho"], 1 - group["rho"], group["eps"]))

RULE = Rule("adadelta", reference, foreach, floor_bytes=28, state=(SQUARE_AVG, ACC_DELTA), launches=launches,
            cpu=CPU)


@register
class Adadelta(ZooOptimizer):
    r"""Adadelta (Zeiler, arXiv:1212.5701), a drop-in for ``torch.optim.Adadelta``:
    ``v = rho v + (1-rho) g^2``, ``delta = sqrt(u + eps) / sqrt(v + eps) g``,
    ``u = rho u + (1-rho) delta^2``, ``p -= lr delta``. State (``step``, ``square_avg``,
    ``acc_delta``) interchanges with torch's."""

    rule = RULE
    paper = "Zeiler 2012, [arXiv:1212.5701](https://arxiv.org/abs/1212.5701)"
    twin = torch.optim.Adadelta
    configs = [{}, {"rho": 0.95, "weight_decay": 0.9}, {"weight_decay": 0.1, "maximize": True}]
    diagonal_adaptive = True

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, foreach=None, *, fused=None,
                 maximize=False, capturable=False, differentiable=False, decoupled_weight_decay=False,
                 line_search=None):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, foreach=foreach, fused=fused,
                        maximize=maximize, capturable=capturable, differentiable=differentiable,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("rho", group["rho"], 0.0, 1.0, high_open=False)
        check_range("eps", group["eps"], 0.0)

    def _new_state(self, p, group):
        return {SQUARE_AVG: zeros_state(p), ACC_DELTA: zeros_state(p)}
