"""Adam, AdamW and AMSGrad in every tier, and the Adam-family pieces AdaBelief and diffGrad share.

docs/algorithms.md, "Adam": ``m = lerp(m, g, 1-b1)``, ``v = b2 v + (1-b2) g^2``,
``vmax = max(vmax, v)`` (AMSGrad), ``p -= lr (m/bc1) / (sqrt(v/bc2) + eps)`` with
``bc_i = 1 - b_i^t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_betas, check_choice, check_range
from ..core.direction import Direction, one_minus_pow, per_step, real_view, sqrt, state_tensors
from ..core.optimizer import ZooOptimizer
from ..core.state import zeros_state
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl

EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ = "exp_avg", "exp_avg_sq", "max_exp_avg_sq"
EPS_MODES = ("torch", "original")


# ------------------------------------------------------------------ Adam-family scaling, every tier
def scaling(v, t, beta1, beta2, eps, eps_mode):
    """Denominator and coefficient of an Adam-type step from the second moment ``v``.

    ``torch``: ``d = -(m/bc1) / (sqrt(v/bc2) + eps)``;
    ``original``: ``d = -(sqrt(bc2)/bc1) * m / (sqrt(v) + eps)`` (eps on the raw root).
    """
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    if eps_mode == "torch":
        return (v.sqrt() / math.sqrt(bc2)).add_(eps), 1 / bc1
    return v.sqrt() + eps, math.sqrt(bc2) / bc1  # out of place: differentiable=True keeps the root


def scaling_list(v, steps, beta1, beta2, eps, eps_mode):
    """List form of :func:`scaling`."""
    denom = torch._foreach_sqrt(v)
    if eps_mode == "torch":
        if isinstance(steps[0], Tensor):  # on the device: times the reciprocal, one division fewer per element
            torch._foreach_mul_(denom, [one_minus_pow(beta2, t).rsqrt() for t in steps])
        else:
            torch._foreach_div_(denom, per_step(steps, lambda t: sqrt(one_minus_pow(beta2, t))))
        torch._foreach_add_(denom, eps)
        return denom, per_step(steps, lambda t: 1 / one_minus_pow(beta1, t))
    torch._foreach_add_(denom, eps)
    return denom, per_step(steps, lambda t: sqrt(one_minus_pow(beta2, t)) / one_minus_pow(beta1, t))


def moments_list(grads, states, beta1, beta2, v_key):
    """``m = lerp(m, g, 1-b1)`` and ``v *= b2`` over the lists; returns ``(m, v)``."""
    m, v = state_tensors(states, EXP_AVG), state_tensors(states, v_key)
    torch._foreach_lerp_(m, grads, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    return m, v


@jit
def adam_step(num, v, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL: tl.constexpr):
    """``(num/bc1) / (sqrt(v/bc2) + eps)`` (torch), or ``sqrt(bc2)/bc1 num / (sqrt(v) + eps)``."""
    bc1 = T.bias_correction(step_ptr, log2_beta1)
    bc2 = T.bias_correction(step_ptr, log2_beta2)
    if EPS_ORIGINAL:
        return (tl.sqrt(bc2) / bc1) * num / (tl.sqrt(v) + eps)
    return (num / bc1) / (tl.sqrt(v) / tl.sqrt(bc2) + eps)


def adam_launch(kernel, group, bucket, keys, **flags) -> Launch:
    """The launch of an Adam-family kernel: state buffers ``keys``, then ``b1, b2, log2 b1, log2 b2, eps``."""
    beta1, beta2 = group["betas"]
    return Launch(kernel, tuple(bucket.flats.get(k) for k in keys),
                  (beta1, beta2, T.log2(beta1), T.log2(beta2), group["eps"]),
                  {"EPS_ORIGINAL": group.get("eps_mode", "torch") == "original", **flags})


def c_scalars(group) -> tuple:
    """``k0..k4`` of the Adam-family C kernels: ``b1, b2, 1-b1, 1-b2, eps``."""
    beta1, beta2 = group["betas"]
    return beta1, beta2, 1 - beta1, 1 - beta2, group["eps"]


def c_flags(group) -> dict:
    return {"EPS_ORIGINAL": group.get("eps_mode", "torch") == "original"}


# C: u0 = -lr times the step's coefficient, u1 = the divisor of sqrt(v) (as scaling() takes them)
C_BIAS = """
    const double bc1 = 1 - pow(k[0], t), bc2 = 1 - pow(k[1], t);
#if EPS_ORIGINAL
    ui[0] = -lr * (sqrt(bc2) / bc1);
    ui[1] = 1;
#else
    ui[0] = -lr * (1 / bc1);
    ui[1] = sqrt(bc2);
#endif
"""
# C: m = lerp(m, g, 1-b1) in S0, v = b2 v + (1-b2) g^2 in S1
C_MOMENTS = """
    const T m = lerp(S0[j], g, k2);
    S0[j] = m;
    T v = S1[j] * k1 + k3 * g * g;
    S1[j] = v;
"""


def c_adam_step(num: str) -> str:
    """C: ``p -= lr coef num / (sqrt(v)/sqrt(bc2) + eps)`` (:func:`scaling`, ``u0``/``u1`` from :data:`C_BIAS`)."""
    return f"p = p + u0 * (({num}) / (sqrt(v) / u1 + k4));"


class AdamFamily(ZooOptimizer):
    """Construction and checks of the optimizers with ``betas`` and ``eps``."""

    diagonal_adaptive = True

    def __init__(self, params, lr, betas, eps, weight_decay, *, foreach, fused, maximize,
                 decoupled_weight_decay, line_search, **extra) -> None:
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, foreach=foreach, fused=fused, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay, **extra)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_betas(group["betas"], foreach=group["foreach"], capturable=group["capturable"])
        check_range("eps", group["eps"], 0.0)
        if "eps_mode" in group:
            check_choice("eps_mode", group["eps_mode"], EPS_MODES)


# ------------------------------------------------------------------ Adam
def reference(group, params, grads, states, steps):
    """Adam / AMSGrad, one tensor at a time."""
    beta1, beta2 = group["betas"]
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        m, v = real_view(state[EXP_AVG]), real_view(state[EXP_AVG_SQ])
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if group["amsgrad"]:
            vmax = real_view(state[MAX_EXP_AVG_SQ])
            # differentiable=True: autograd keeps the old vmax, so the maximum reads a copy of it
            v = torch.maximum(vmax.clone() if group["differentiable"] else vmax, v)
            vmax.copy_(v)
        denom, coef = scaling(v, t, beta1, beta2, group["eps"], "torch")
        nums.append(m), denoms.append(denom), coefs.append(coef)
    return Direction(nums, denoms, coefs)


def foreach(group, params, grads, states, steps):
    """Adam / AMSGrad over tensor lists."""
    beta1, beta2 = group["betas"]
    m, v = moments_list(grads, states, beta1, beta2, EXP_AVG_SQ)
    torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
    if group["amsgrad"]:
        vmax = state_tensors(states, MAX_EXP_AVG_SQ)
        torch._foreach_maximum_(vmax, v)
        v = vmax
    denom, coef = scaling_list(v, steps, beta1, beta2, group["eps"], "torch")
    return Direction(m, denom, coef)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd,
           m_ptr, v_ptr, vmax_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, AMSGRAD: tl.constexpr, EPS_ORIGINAL: tl.constexpr, LARGE: tl.constexpr,
           BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    """One block of an Adam / AdamW / AMSGrad step."""
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    m_ptr = T.entry(m_ptr, i, TABLE, tl.float32)
    v_ptr = T.entry(v_ptr, i, TABLE, tl.float32)
    vmax_ptr = T.entry(vmax_ptr, i, TABLE, tl.float32)
    m = T.first_moment(m_ptr, offs, mask, g, beta1)
    v = T.second_moment(v_ptr, offs, mask, g, beta2, 0.0)
    if AMSGRAD:
        v = tl.maximum(T.load(vmax_ptr, offs, mask), v)
        T.store(vmax_ptr, offs, v, mask)
    p = p - lr * adam_step(m, v, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL)
    T.store(p_ptr, offs, p, mask)


def launches(group, bucket, group_state):
    return [adam_launch(kernel, group, bucket, (EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ), AMSGRAD=group["amsgrad"])]


def torch_kernel(group):
    """torch's single-pass fused Adam / AdamW (``torch._fused_adam_``, ``torch._fused_adamw_``):
    the kernel applies ``grad_scale``, ``maximize`` and the weight decay itself."""
    beta1, beta2 = group["betas"]
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_

    def run(params, grads, states, steps, lr, grad_scale, found_inf):
        kernel(params, grads, [s[EXP_AVG] for s in states], [s[EXP_AVG_SQ] for s in states],
               [s[MAX_EXP_AVG_SQ] for s in states] if group["amsgrad"] else [], steps,
               lr=lr, beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
               amsgrad=group["amsgrad"], maximize=group["maximize"], grad_scale=grad_scale, found_inf=found_inf)
    return run


CPU = CKernel(C_MOMENTS + """
#if AMSGRAD
    v = maximum(S2[j], v);
    S2[j] = v;
#endif
""" + c_adam_step("m"), (EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ), c_scalars, C_BIAS,
              lambda group: {**c_flags(group), "AMSGRAD": group["amsgrad"]})

RULE = Rule("adam", reference, foreach, floor_bytes=28, state=(EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ),
            launches=launches, torch_kernel=torch_kernel, cpu=CPU)


@register
class Adam(AdamFamily):
    r"""Adam (Kingma & Ba, arXiv:1412.6980), a drop-in for ``torch.optim.Adam``.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr (m/bc1) / (sqrt(v/bc2) + eps)``
    with ``bc_i = 1 - b_i^t``; ``amsgrad=True`` uses ``max`` of all ``v`` so far (Reddi et al.,
    arXiv:1904.09237). ``weight_decay`` is coupled L2 (``g += wd p``) unless
    ``decoupled_weight_decay=True`` (``p *= 1 - lr wd``, AdamW). State (``step``, ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``) interchanges with torch.optim.Adam's state_dict.
    """

    rule = RULE
    paper = "Kingma & Ba 2014, [arXiv:1412.6980](https://arxiv.org/abs/1412.6980); AMSGrad: Reddi et al. 2018"
    twin = torch.optim.Adam
    configs = [{}, {"amsgrad": True, "weight_decay": 0.1},
               {"maximize": True, "decoupled_weight_decay": True, "weight_decay": 0.1}]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, foreach=None, fused=None, maximize=False, capturable=False, differentiable=False,
                 decoupled_weight_decay=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad=amsgrad, foreach=foreach, fused=fused,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         decoupled_weight_decay=decoupled_weight_decay,
                         line_search=line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_choice("amsgrad", group["amsgrad"], (True, False))
        if isinstance(group["lr"], torch.Tensor) and group["foreach"] and not group["capturable"]:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True "
                             "(as torch.optim.Adam); pass a float, or capturable=True")

    def _new_state(self, p, group):
        state = {EXP_AVG: zeros_state(p), EXP_AVG_SQ: zeros_state(p)}
        if group["amsgrad"]:
            state[MAX_EXP_AVG_SQ] = zeros_state(p)
        return state


@register
class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, arXiv:1711.05101): Adam with decoupled weight decay,
    ``p *= 1 - lr wd`` before the Adam step; a drop-in for ``torch.optim.AdamW`` (``wd = 1e-2``)."""

    paper = "Loshchilov & Hutter 2017, [arXiv:1711.05101](https://arxiv.org/abs/1711.05101)"
    twin = torch.optim.AdamW
    configs = [{}]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, foreach=None, fused=None, maximize=False, capturable=False, differentiable=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, fused=fused,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         decoupled_weight_decay=True, line_search=line_search)
