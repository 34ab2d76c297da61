"""AdaBelief in every tier (Zhuang et al., arXiv:2010.07468; docs/algorithms.md, "AdaBelief"):
``m = lerp(m, g, 1-b1)``, ``s = b2 s + (1-b2)(g - m)^2 + eps``, then Adam's step with ``s`` for ``v``."""

from __future__ import annotations

import torch

from ..core.direction import Direction, real_view
from ..core.state import zeros_state
from ..core.rule import CKernel, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl
from .adam import (C_BIAS, EXP_AVG, AdamFamily, adam_launch, adam_step, c_adam_step, c_flags, c_scalars, moments_list,
                   scaling, scaling_list)

EXP_AVG_VAR = "exp_avg_var"


def reference(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        m, s = real_view(state[EXP_AVG]), real_view(state[EXP_AVG_VAR])
        m.lerp_(g, 1 - beta1)
        r = g - m
        s.mul_(beta2).addcmul_(r, r, value=1 - beta2).add_(group["eps"])
        denom, coef = scaling(s, t, beta1, beta2, group["eps"], group["eps_mode"])
        nums.append(m), denoms.append(denom), coefs.append(coef)
    return Direction(nums, denoms, coefs)


def foreach(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m, s = moments_list(grads, states, beta1, beta2, EXP_AVG_VAR)
    r = torch._foreach_sub(grads, m)
    torch._foreach_addcmul_(s, r, r, 1 - beta2)
    torch._foreach_add_(s, group["eps"])
    denom, coef = scaling_list(s, steps, beta1, beta2, group["eps"], group["eps_mode"])
    return Direction(m, denom, coef)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd,
           m_ptr, s_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, EPS_ORIGINAL: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    m_ptr = T.entry(m_ptr, i, TABLE, tl.float32)
    s_ptr = T.entry(s_ptr, i, TABLE, tl.float32)
    m = T.first_moment(m_ptr, offs, mask, g, beta1)
    s = T.second_moment(s_ptr, offs, mask, g - m, beta2, eps)
    p = p - lr * adam_step(m, s, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL)
    T.store(p_ptr, offs, p, mask)


def launches(group, bucket, group_state):
    return [adam_launch(kernel, group, bucket, (EXP_AVG, EXP_AVG_VAR))]


CPU = CKernel("""
    const T m = lerp(S0[j], g, k2);
    S0[j] = m;
    const T r = g - m;
    const T v = (S1[j] * k1 + k3 * r * r) + k4;
    S1[j] = v;
""" + c_adam_step("m"), (EXP_AVG, EXP_AVG_VAR), c_scalars, C_BIAS, c_flags)

RULE = Rule("adabelief", reference, foreach, floor_bytes=28, state=(EXP_AVG, EXP_AVG_VAR), launches=launches,
            cpu=CPU)


@register
class AdaBelief(AdamFamily):
    r"""AdaBelief (Zhuang et al., arXiv:2010.07468): Adam with the second moment of the
    *surprise* ``g - m``: ``s = b2 s + (1-b2)(g - m)^2 + eps``.

    ``eps_mode="torch"``: ``p -= lr (m/bc1) / (sqrt(s/bc2) + eps)`` (the paper's Algorithm 2 and its
    official code); ``"original"``: ``p -= lr sqrt(bc2)/bc1 m / (sqrt(s) + eps)``.
    """

    rule = RULE
    paper = "Zhuang et al. 2020, [arXiv:2010.07468](https://arxiv.org/abs/2010.07468)"
    twin = None
    configs = [{}, {"eps_mode": "original", "weight_decay": 0.1}]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, *,
                 eps_mode="torch", foreach=None, fused=None, maximize=False, capturable=False, differentiable=False,
                 decoupled_weight_decay=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, eps_mode=eps_mode, foreach=foreach, fused=fused,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         decoupled_weight_decay=decoupled_weight_decay,
                         line_search=line_search)

    def _new_state(self, p, group):
        return {EXP_AVG: zeros_state(p), EXP_AVG_VAR: zeros_state(p)}
