"""NAdam in every tier (Dozat 2016, "Incorporating Nesterov Momentum into Adam"; docs/algorithms.md,
"NAdam"), exactly as torch.optim.NAdam: with ``mu_t = b1 (1 - 0.96^(t psi) / 2)`` and the running
product ``mu_product = prod_{k<=t} mu_k`` kept per parameter,
``p -= lr [(1-mu_t)/(1-mu_product) g + mu_{t+1}/(1-mu_product mu_{t+1}) m] / (sqrt(v/bc2) + eps)``.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_range
from ..core.direction import Direction, one_minus_pow, real_view
from ..core.state import scalar_dtype, zeros_state
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl
from .adam import C_MOMENTS, EXP_AVG, EXP_AVG_SQ, AdamFamily, c_scalars, moments_list

MU_PRODUCT = "mu_product"  # 0-dim, per parameter, as torch keeps it


def _mu(beta1: float, psi: float, t: float) -> float:
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))


def _coefficients(group, t: float, mu_product: float) -> tuple[float, float]:
    """The weights of ``g`` and ``m`` at step ``t``, ``mu_product`` already including ``mu_t``."""
    beta1, psi = group["betas"][0], group["momentum_decay"]
    mu, mu_next = _mu(beta1, psi, t), _mu(beta1, psi, t + 1)
    return (1.0 - mu) / (1.0 - mu_product), mu_next / (1.0 - mu_product * mu_next)


def _first(t: torch.Tensor) -> float:
    """The value of a ``mu_product``: a 0-dim tensor, or a flat bucket's stacked one (all equal)."""
    return float(t.reshape(-1)[0])


def reference(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    nums, denoms = [], []
    for g, state, t in zip(grads, states, steps):
        m, v, mu_product = real_view(state[EXP_AVG]), real_view(state[EXP_AVG_SQ]), state[MU_PRODUCT]
        mu_product.mul_(_mu(beta1, group["momentum_decay"], t))
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        c_g, c_m = _coefficients(group, t, _first(mu_product))
        nums.append(g.mul(c_g).add_(m, alpha=c_m))
        denoms.append(v.div(1 - beta2 ** t).sqrt() + group["eps"])  # out of place: differentiable=True
    return Direction(nums, denoms, 1.0)


def foreach(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    mu_products = [s[MU_PRODUCT] for s in states]
    torch._foreach_mul_(mu_products, [_mu(beta1, group["momentum_decay"], t) for t in steps])
    if isinstance(steps[0], torch.Tensor):  # on the device (compiled, capturable): no host read
        values = mu_products
    else:
        values = torch.stack([p.reshape(-1)[0] for p in mu_products]).tolist()  # one host read
    m, v = moments_list(grads, states, beta1, beta2, EXP_AVG_SQ)
    torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
    c_g, c_m = zip(*(_coefficients(group, t, mp) for t, mp in zip(steps, values)))
    nums = torch._foreach_mul(grads, list(c_g))
    torch._foreach_add_(nums, torch._foreach_mul(m, list(c_m)))
    denom = torch._foreach_div(v, [one_minus_pow(beta2, t) for t in steps])
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, group["eps"])
    return Direction(nums, denom, 1.0)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, m_ptr, v_ptr, mu_product_ptr,
           beta1, beta2, log2_beta2, psi_log2_096, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    m_ptr = T.entry(m_ptr, i, TABLE, tl.float32)
    v_ptr = T.entry(v_ptr, i, TABLE, tl.float32)
    m = T.first_moment(m_ptr, offs, mask, g, beta1)
    v = T.second_moment(v_ptr, offs, mask, g, beta2, 0.0)
    t = tl.load(step_ptr)
    mu = beta1 * (1 - 0.5 * tl.exp2(t * psi_log2_096))
    mu_next = beta1 * (1 - 0.5 * tl.exp2((t + 1) * psi_log2_096))
    mu_product = tl.load(mu_product_ptr)  # includes mu (the prologue multiplied it in)
    if TABLE:
        T.write_scalar(n, 1, mu_product, inf_ptr, HAS_INF, ROW)
    denom = tl.sqrt(v / T.bias_correction(step_ptr, log2_beta2)) + eps
    d = ((1 - mu) / (1 - mu_product) * g + mu_next / (1 - mu_product * mu_next) * m) / denom
    T.store(p_ptr, offs, p - lr * d, mask)


def launches(group, bucket, group_state):
    beta1, beta2 = group["betas"]
    return [Launch(kernel, (bucket.flats[EXP_AVG], bucket.flats[EXP_AVG_SQ], bucket.scalars[MU_PRODUCT]),
                   (beta1, beta2, T.log2(beta2), group["momentum_decay"] * math.log2(0.96), group["eps"]))]


def prologue(group, bucket, found_inf):
    """``mu_product *= mu_t`` on the device (``t`` already advanced; a step skipped by AMP's
    ``found_inf`` multiplies by 1)."""
    mu = group["betas"][0] * (1 - 0.5 * torch.pow(0.96, bucket.steps * group["momentum_decay"]))
    if found_inf is not None:
        mu = torch.where(found_inf.to(mu.device) != 0, torch.ones_like(mu), mu)
    bucket.scalars[MU_PRODUCT].mul_(mu)


CPU = CKernel(C_MOMENTS + """
    p = p - lr_t * ((g * u0 + m * u1) / (sqrt(v / u2) + k4));
""", (EXP_AVG, EXP_AVG_SQ), lambda group: (*c_scalars(group), group["momentum_decay"]), """
    const double mu = k[0] * (1 - 0.5 * pow(0.96, t * k[5])), mu_next = k[0] * (1 - 0.5 * pow(0.96, (t + 1) * k[5]));
    Z(0) = Z(0) * (step_t)mu;  /* mu_product */
    ui[0] = (1 - mu) / (1 - (double)Z(0));
    ui[1] = mu_next / (1 - (double)Z(0) * mu_next);
    ui[2] = 1 - pow(k[1], t);
""")

RULE = Rule("nadam", reference, foreach, floor_bytes=28, state=(EXP_AVG, EXP_AVG_SQ), scalar_state=(MU_PRODUCT,),
            launches=launches, prologue=prologue, cpu=CPU)


@register
class NAdam(AdamFamily):
    r"""NAdam (Dozat 2016), a drop-in for ``torch.optim.NAdam``: Adam with Nesterov momentum,
    ``mu_t = b1 (1 - 0.96^(t momentum_decay) / 2)``,
    ``p -= lr [(1-mu_t)/(1-prod mu) g + mu_{t+1}/(1-prod mu mu_{t+1}) m] / (sqrt(v/bc2) + eps)``.
    ``decoupled_weight_decay=True`` is NAdamW. State (``step``, ``mu_product``, ``exp_avg``,
    ``exp_avg_sq``) interchanges with torch's."""

    rule = RULE
    paper = "Dozat 2016, ICLR workshop"
    twin = torch.optim.NAdam
    configs = [{}, {"weight_decay": 0.1, "momentum_decay": 0.006},
               {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}]
    diagonal_adaptive = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, fused=None, maximize=False, capturable=False,
                 differentiable=False, line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, momentum_decay=momentum_decay, foreach=foreach,
                         fused=fused, maximize=maximize, capturable=capturable, differentiable=differentiable,
                         decoupled_weight_decay=decoupled_weight_decay,
                         line_search=line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("momentum_decay", group["momentum_decay"], 0.0)

    def _new_state(self, p, group):
        return {MU_PRODUCT: torch.tensor(1.0, dtype=scalar_dtype()), EXP_AVG: zeros_state(p),
                EXP_AVG_SQ: zeros_state(p)}
