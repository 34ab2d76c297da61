"""RAdam in every tier (Liu et al. 2019, "On the Variance of the Adaptive Learning Rate and Beyond",
arXiv:1908.03265; docs/algorithms.md, "RAdam"), exactly as torch.optim.RAdam: with
``rho_inf = 2/(1-b2) - 1`` and ``rho_t = rho_inf - 2 t b2^t / bc2``, where ``rho_t > 5``
``p -= lr r_t (m/bc1) sqrt(bc2) / (sqrt(v) + eps)`` with the rectification
``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``, else ``p -= lr m/bc1``.
"""

from __future__ import annotations

import math

import torch

from ..core.direction import Direction, one_minus_pow, real_view
from ..core.state import zeros_state
from ..core.rule import CKernel, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl
from .adam import C_MOMENTS, EXP_AVG, EXP_AVG_SQ, AdamFamily, adam_launch, c_scalars, moments_list


def _rectification(beta2: float, t: float) -> float | None:
    """``r_t`` where the variance is tractable (``rho_t > 5``), else None."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
    if rho_t <= 5.0:
        return None
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


def _direction(group, ms, vs, steps, sqrt):
    """``-(m/bc1) r sqrt(bc2) / (sqrt(v) + eps)`` where rectified, ``-m/bc1`` elsewhere (a
    denominator of ones for those only when the steps differ)."""
    beta1, beta2 = group["betas"]
    rects = [_rectification(beta2, t) for t in steps]
    coefs = [(1.0 if r is None else r * math.sqrt(1 - beta2 ** t)) / (1 - beta1 ** t) for r, t in zip(rects, steps)]
    if all(r is None for r in rects):
        return Direction(ms, None, coefs)
    denoms = list(sqrt([v for v, r in zip(vs, rects)]))
    for i, r in enumerate(rects):
        if r is None:
            denoms[i] = torch.ones_like(ms[i])
        else:
            denoms[i].add_(group["eps"])
    return Direction(ms, denoms, coefs)


def _direction_on_device(group, ms, vs, steps):
    """:func:`_direction` for tensor steps (compiled, capturable): both branches as selects, no host read."""
    beta1, beta2 = group["betas"]
    rho_inf = 2 / (1 - beta2) - 1
    denoms, coefs = [], []
    for m, v, t in zip(ms, vs, steps):
        t = t.double()  # rho_t is a difference of two numbers near rho_inf: float32 would lose it
        bc2 = one_minus_pow(beta2, t)
        rho_t = rho_inf - 2 * t * (1 - bc2) / bc2
        r = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).clamp(min=0).sqrt()
        rectified = rho_t > 5.0
        coefs.append(torch.where(rectified, r * bc2.sqrt(), 1.0) / one_minus_pow(beta1, t))
        denoms.append(torch.where(rectified, v.sqrt() + group["eps"], 1.0))
    return Direction(ms, denoms, coefs)


def reference(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    ms, vs = [], []
    for g, state in zip(grads, states):
        m, v = real_view(state[EXP_AVG]), real_view(state[EXP_AVG_SQ])
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        ms.append(m), vs.append(v)
    return _direction(group, ms, vs, steps, lambda vs: [v.sqrt() for v in vs])


def foreach(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m, v = moments_list(grads, states, beta1, beta2, EXP_AVG_SQ)
    torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
    if isinstance(steps[0], torch.Tensor):
        return _direction_on_device(group, m, v, steps)
    return _direction(group, m, v, steps, torch._foreach_sqrt)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd,
           m_ptr, v_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, EPS_ORIGINAL: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    m_ptr = T.entry(m_ptr, i, TABLE, tl.float32)
    v_ptr = T.entry(v_ptr, i, TABLE, tl.float32)
    m = T.first_moment(m_ptr, offs, mask, g, beta1)
    v = T.second_moment(v_ptr, offs, mask, g, beta2, 0.0)
    t = tl.load(step_ptr)
    bc1 = T.bias_correction(step_ptr, log2_beta1)
    bc2 = T.bias_correction(step_ptr, log2_beta2)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * (1 - bc2) / bc2
    rect = tl.sqrt(tl.maximum((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t), 0.0))
    scale = tl.where(rho_t > 5.0, rect * tl.sqrt(bc2) / (tl.sqrt(v) + eps), 1.0)
    T.store(p_ptr, offs, p - lr * (m / bc1) * scale, mask)


def launches(group, bucket, group_state):
    return [adam_launch(kernel, group, bucket, (EXP_AVG, EXP_AVG_SQ))]


CPU = CKernel(C_MOMENTS + """
    p = p + u0 * (m / (u1 != 0 ? sqrt(v) + k4 : (T)1));
""", (EXP_AVG, EXP_AVG_SQ), c_scalars, """
    const double bc1 = 1 - pow(k[0], t), b2t = pow(k[1], t);
    const double rho_inf = 2 / (1 - k[1]) - 1;
    const double rho_t = rho_inf - 2 * t * b2t / (1 - b2t);
    if (rho_t > 5.0) {  /* rectified: u0 = -lr r sqrt(bc2) / bc1 */
        const double r = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t));
        ui[0] = -lr * (r * sqrt(1 - b2t) / bc1);
        ui[1] = 1;
    } else {
        ui[0] = -lr * (1 / bc1);
        ui[1] = 0;
    }
""")

RULE = Rule("radam", reference, foreach, floor_bytes=28, state=(EXP_AVG, EXP_AVG_SQ), launches=launches, cpu=CPU)


@register
class RAdam(AdamFamily):
    r"""RAdam (Liu et al., arXiv:1908.03265), a drop-in for ``torch.optim.RAdam``: Adam whose
    adaptive step is switched on, and rectified by ``r_t``, once the variance of the adaptive
    learning rate is tractable (``rho_t > 5``); before that, SGD with momentum ``p -= lr m/bc1``.
    ``decoupled_weight_decay=True`` is RAdamW. State interchanges with torch's."""

    rule = RULE
    paper = "Liu et al. 2019, [arXiv:1908.03265](https://arxiv.org/abs/1908.03265)"
    twin = torch.optim.RAdam
    configs = [{}, {"weight_decay": 0.1, "eps": 1e-6},
               {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}]
    diagonal_adaptive = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, foreach=None, fused=None, maximize=False, capturable=False,
                 differentiable=False, line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, foreach=foreach, fused=fused, maximize=maximize,
              capturable=capturable, differentiable=differentiable,
                         decoupled_weight_decay=decoupled_weight_decay, line_search=line_search)

    def _new_state(self, p, group):
        return {EXP_AVG: zeros_state(p), EXP_AVG_SQ: zeros_state(p)}
