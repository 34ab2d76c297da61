"""diffGrad in every tier (Dubey et al., arXiv:1909.11015; docs/algorithms.md, "diffGrad"): Adam's
moments, and the first moment scaled by the friction ``xi = sigmoid(|g_prev - g|)`` (``g_prev`` a
copy of the last gradient, 0 at first, never an alias of ``p.grad``)."""

from __future__ import annotations

import torch

from ..core.direction import Direction, real_view, state_tensors
from ..core.state import zeros_state
from ..core.rule import CKernel, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl
from .adam import (C_BIAS, C_MOMENTS, EXP_AVG, EXP_AVG_SQ, AdamFamily, adam_launch, adam_step, c_adam_step, c_flags,
                   c_scalars, moments_list, scaling, scaling_list)

PREVIOUS_GRAD = "previous_grad"


def reference(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        m, v = real_view(state[EXP_AVG]), real_view(state[EXP_AVG_SQ])
        prev = real_view(state[PREVIOUS_GRAD])
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        xi = torch.sigmoid((prev - g).abs_())
        prev.copy_(g)
        denom, coef = scaling(v, t, beta1, beta2, group["eps"], group["eps_mode"])
        nums.append(m * xi), denoms.append(denom), coefs.append(coef)
    return Direction(nums, denoms, coefs)


def foreach(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m, v = moments_list(grads, states, beta1, beta2, EXP_AVG_SQ)
    torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
    prev = state_tensors(states, PREVIOUS_GRAD)
    xi = torch._foreach_sub(prev, grads)
    torch._foreach_abs_(xi)
    torch._foreach_sigmoid_(xi)
    torch._foreach_copy_(prev, grads)
    torch._foreach_mul_(xi, m)
    denom, coef = scaling_list(v, steps, beta1, beta2, group["eps"], group["eps_mode"])
    return Direction(xi, denom, coef)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd,
           m_ptr, v_ptr, prev_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, EPS_ORIGINAL: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    m_ptr = T.entry(m_ptr, i, TABLE, tl.float32)
    v_ptr = T.entry(v_ptr, i, TABLE, tl.float32)
    prev_ptr = T.entry(prev_ptr, i, TABLE, tl.float32)
    m = T.first_moment(m_ptr, offs, mask, g, beta1)
    v = T.second_moment(v_ptr, offs, mask, g, beta2, 0.0)
    prev = T.load(prev_ptr, offs, mask)
    T.store(prev_ptr, offs, g, mask)
    xi = tl.sigmoid(tl.abs(prev - g))
    p = p - lr * adam_step(xi * m, v, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL)
    T.store(p_ptr, offs, p, mask)


def launches(group, bucket, group_state):
    return [adam_launch(kernel, group, bucket, (EXP_AVG, EXP_AVG_SQ, PREVIOUS_GRAD))]


CPU = CKernel(C_MOMENTS + """
    const T xi = sigmoid(fabs(S2[j] - g));
    S2[j] = g;
""" + c_adam_step("m * xi"), (EXP_AVG, EXP_AVG_SQ, PREVIOUS_GRAD), c_scalars, C_BIAS, c_flags)

RULE = Rule("diffgrad", reference, foreach, floor_bytes=36, state=(EXP_AVG, EXP_AVG_SQ, PREVIOUS_GRAD),
            launches=launches, cpu=CPU)


@register
class DiffGrad(AdamFamily):
    r"""diffGrad (Dubey et al., arXiv:1909.11015): Adam whose first moment is scaled by the
    friction ``xi = sigmoid(|g_{t-1} - g_t|)`` (``g_0 = 0``; ``g_{t-1}`` is a copy, never an alias
    of ``p.grad``).

    ``eps_mode="torch"``: ``p -= lr (xi m/bc1) / (sqrt(v/bc2) + eps)``; ``"original"`` (the paper's
    code and torch_optimizer.DiffGrad): ``p -= lr sqrt(bc2)/bc1 xi m / (sqrt(v) + eps)``.
    """

    rule = RULE
    paper = "Dubey et al. 2019, [arXiv:1909.11015](https://arxiv.org/abs/1909.11015)"
    twin = None
    configs = [{}, {"eps_mode": "original", "decoupled_weight_decay": True, "weight_decay": 0.1}]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 eps_mode="torch", foreach=None, fused=None, maximize=False, capturable=False, differentiable=False,
                 decoupled_weight_decay=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, eps_mode=eps_mode, foreach=foreach, fused=fused,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         decoupled_weight_decay=decoupled_weight_decay,
                         line_search=line_search)

    def _new_state(self, p, group):
        return {EXP_AVG: zeros_state(p), EXP_AVG_SQ: zeros_state(p), PREVIOUS_GRAD: zeros_state(p)}
