"""Adamax in every tier (Kingma & Ba 2014, arXiv:1412.6980, section 7.1; docs/algorithms.md,
"Adamax"), exactly as torch.optim.Adamax: ``m = lerp(m, g, 1-b1)``,
``u = max(b2 u, |g| + eps)``, ``p -= lr/bc1 m / u``."""

from __future__ import annotations

import torch

from ..core.direction import Direction, one_minus_pow, per_step, real_view, state_tensors
from ..core.state import zeros_state
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl
from .adam import EXP_AVG, AdamFamily, c_scalars

EXP_INF = "exp_inf"


def reference(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        m, u = real_view(state[EXP_AVG]), real_view(state[EXP_INF])
        m.lerp_(g, 1 - beta1)
        u.copy_(torch.maximum(u * beta2, g.abs() + group["eps"]))  # out of place: differentiable=True
        nums.append(m), denoms.append(u), coefs.append(1 / (1 - beta1 ** t))
    return Direction(nums, denoms, coefs)


def foreach(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m, u = state_tensors(states, EXP_AVG), state_tensors(states, EXP_INF)
    torch._foreach_lerp_(m, grads, 1 - beta1)
    torch._foreach_mul_(u, beta2)
    bound = torch._foreach_abs(grads)
    torch._foreach_add_(bound, group["eps"])
    torch._foreach_maximum_(u, bound)
    return Direction(m, u, per_step(steps, lambda t: 1 / one_minus_pow(beta1, t)))


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, m_ptr, u_ptr, beta1, beta2, log2_beta1, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    m_ptr = T.entry(m_ptr, i, TABLE, tl.float32)
    u_ptr = T.entry(u_ptr, i, TABLE, tl.float32)
    m = T.first_moment(m_ptr, offs, mask, g, beta1)
    u = tl.maximum(beta2 * T.load(u_ptr, offs, mask), tl.abs(g) + eps)
    T.store(u_ptr, offs, u, mask)
    T.store(p_ptr, offs, p - lr / T.bias_correction(step_ptr, log2_beta1) * m / u, mask)


def launches(group, bucket, group_state):
    beta1, beta2 = group["betas"]
    return [Launch(kernel, (bucket.flats[EXP_AVG], bucket.flats[EXP_INF]),
                   (beta1, beta2, T.log2(beta1), group["eps"]))]


CPU = CKernel("""
    const T m = lerp(S0[j], g, k2);
    S0[j] = m;
    const T u = maximum(S1[j] * k1, fabs(g) + k4);
    S1[j] = u;
    p = p + u0 * (m / u);
""", (EXP_AVG, EXP_INF), c_scalars, "ui[0] = -lr * (1 / (1 - pow(k[0], t)));")

RULE = Rule("adamax", reference, foreach, floor_bytes=28, state=(EXP_AVG, EXP_INF), launches=launches, cpu=CPU)


@register
class Adamax(AdamFamily):
    r"""Adamax (Kingma & Ba, arXiv:1412.6980, section 7.1), a drop-in for ``torch.optim.Adamax``:
    Adam with the infinity norm, ``u = max(b2 u, |g| + eps)``, ``p -= lr/bc1 m / u``.
    State (``step``, ``exp_avg``, ``exp_inf``) interchanges with torch's."""

    rule = RULE
    paper = "Kingma & Ba 2014, [arXiv:1412.6980](https://arxiv.org/abs/1412.6980) section 7.1"
    twin = torch.optim.Adamax
    configs = [{}, {"weight_decay": 0.1, "maximize": True}]
    diagonal_adaptive = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=None, *,
                 fused=None, maximize=False, capturable=False, differentiable=False, decoupled_weight_decay=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, foreach=foreach, fused=fused, maximize=maximize,
              capturable=capturable, differentiable=differentiable,
                         decoupled_weight_decay=decoupled_weight_decay, line_search=line_search)

    def _new_state(self, p, group):
        return {EXP_AVG: zeros_state(p), EXP_INF: zeros_state(p)}
