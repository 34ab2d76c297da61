"""RMSProp in every tier (Tieleman & Hinton 2012; docs/algorithms.md, "RMSProp"), exactly as
torch.optim.RMSprop: ``v = a v + (1-a) g^2``; ``avg = sqrt(v) + eps`` (centered:
``sqrt(v - ga^2) + eps`` with ``ga = lerp(ga, g, 1-a)``); ``d = -g/avg``, or with momentum
``buf = mu buf + g/avg``, ``d = -buf``."""

from __future__ import annotations

import torch

from .._validation import check_choice, check_range
from ..core.direction import Direction, real_view, state_tensors
from ..core.optimizer import ZooOptimizer
from ..core.state import zeros_state
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl

SQUARE_AVG, GRAD_AVG, MOMENTUM_BUFFER = "square_avg", "grad_avg", "momentum_buffer"


def reference(group, params, grads, states, steps):
    alpha = group["alpha"]
    nums, denoms = [], []
    for g, state in zip(grads, states):
        v = real_view(state[SQUARE_AVG])
        v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if group["centered"]:
            ga = real_view(state[GRAD_AVG])
            ga.lerp_(g, 1 - alpha)
            avg = v.addcmul(ga, ga, value=-1).sqrt()
        else:
            avg = v.sqrt()
        avg = avg + group["eps"]  # out of place: differentiable=True keeps the root for autograd
        if group["momentum"] > 0:
            buf = real_view(state[MOMENTUM_BUFFER])
            buf.mul_(group["momentum"]).addcdiv_(g, avg)
            nums.append(buf)
        else:
            nums.append(g), denoms.append(avg)
    return Direction(nums, denoms if denoms else None, 1.0)


def foreach(group, params, grads, states, steps):
    alpha = group["alpha"]
    v = state_tensors(states, SQUARE_AVG)
    torch._foreach_mul_(v, alpha)
    torch._foreach_addcmul_(v, grads, grads, 1 - alpha)
    if group["centered"]:
        ga = state_tensors(states, GRAD_AVG)
        torch._foreach_lerp_(ga, grads, 1 - alpha)
        avg = torch._foreach_addcmul(v, ga, ga, -1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(v)
    torch._foreach_add_(avg, group["eps"])
    if group["momentum"] > 0:
        buf = state_tensors(states, MOMENTUM_BUFFER)
        torch._foreach_mul_(buf, group["momentum"])
        torch._foreach_addcdiv_(buf, grads, avg)
        return Direction(buf, None, 1.0)
    return Direction(list(grads), avg, 1.0)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, v_ptr, ga_ptr, buf_ptr,
           alpha, eps, momentum,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, LARGE: tl.constexpr,
           BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    v_ptr = T.entry(v_ptr, i, TABLE, tl.float32)
    ga_ptr = T.entry(ga_ptr, i, TABLE, tl.float32)
    buf_ptr = T.entry(buf_ptr, i, TABLE, tl.float32)
    v = T.second_moment(v_ptr, offs, mask, g, alpha, 0.0)
    if CENTERED:
        ga = T.first_moment(ga_ptr, offs, mask, g, alpha)
        v = v - ga * ga
    d = g / (tl.sqrt(v) + eps)
    if MOMENTUM:
        d = momentum * T.load(buf_ptr, offs, mask) + d
        T.store(buf_ptr, offs, d, mask)
    T.store(p_ptr, offs, p - lr * d, mask)


def launches(group, bucket, group_state):
    flats = bucket.flats
    return [Launch(kernel, (flats[SQUARE_AVG], flats.get(GRAD_AVG), flats.get(MOMENTUM_BUFFER)),
                   (group["alpha"], group["eps"], group["momentum"]),
                   {"CENTERED": group["centered"], "MOMENTUM": group["momentum"] > 0})]


CPU = CKernel("""
    const T v = S0[j] * k0 + k1 * g * g;
    S0[j] = v;
#if CENTERED
    const T ga = lerp(S1[j], g, k1);
    S1[j] = ga;
    const T avg = sqrt(v - ga * ga) + k2;
#else
    const T avg = sqrt(v) + k2;
#endif
#if MOMENTUM
    const T buf = S2[j] * k3 + g / avg;
    S2[j] = buf;
    p = p - lr_t * buf;
#else
    p = p - lr_t * (g / avg);
#endif
""", (SQUARE_AVG, GRAD_AVG, MOMENTUM_BUFFER), lambda group: (group["alpha"], 1 - group["alpha"], group["eps"],
                                                            group["momentum"]),
              flags=lambda group: {"CENTERED": group["centered"], "MOMENTUM": group["momentum"] > 0})

RULE = Rule("rmsprop", reference, foreach, floor_bytes=20, state=(SQUARE_AVG, GRAD_AVG, MOMENTUM_BUFFER),
            launches=launches, cpu=CPU)


@register
class RMSprop(ZooOptimizer):
    r"""RMSProp (Tieleman & Hinton, 2012), a drop-in for ``torch.optim.RMSprop``:
    ``v = a v + (1-a) g^2``; ``avg = sqrt(v) + eps`` (``centered``: ``sqrt(v - ga^2) + eps`` with
    ``ga = a ga + (1-a) g``); ``p -= lr g / avg``, or with ``momentum``
    ``buf = mu buf + g / avg``, ``p -= lr buf``."""

    diagonal_adaptive = True
    rule = RULE
    paper = "Tieleman & Hinton 2012, Coursera lecture 6.5"
    twin = torch.optim.RMSprop
    configs = [{}, {"momentum": 0.5, "centered": True}]

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, foreach=None, maximize=False, capturable=False, differentiable=False, *,
                 fused=None, decoupled_weight_decay=False,
                 line_search=None):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, foreach=foreach, fused=fused, maximize=maximize, capturable=capturable,
                        differentiable=differentiable,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("alpha", group["alpha"], 0.0, 1.0, high_open=False)
        check_range("eps", group["eps"], 0.0)
        check_range("momentum", group["momentum"], 0.0)
        check_choice("centered", group["centered"], (True, False))

    def _new_state(self, p, group):
        state = {SQUARE_AVG: zeros_state(p)}
        if group["momentum"] > 0:
            state[MOMENTUM_BUFFER] = zeros_state(p)
        if group["centered"]:
            state[GRAD_AVG] = zeros_state(p)
        return state
