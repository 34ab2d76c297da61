"""Lion in every tier (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
arXiv:2302.06675; docs/algorithms.md, "Lion"): ``c = b1 m + (1-b1) g``, ``p *= 1 - lr wd``,
``p -= lr sign(c)``, then ``m = b2 m + (1-b2) g``. The reference implementation is the
``lion-pytorch`` package (the tests' oracle); complex parameters take the sign of the real and
imaginary parts separately (their real view)."""

from __future__ import annotations

import torch

from .._validation import check_betas
from ..core.direction import Direction, real_view, state_tensors
from ..core.optimizer import ZooOptimizer
from ..core.state import zeros_state
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl

EXP_AVG = "exp_avg"


def reference(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    nums = []
    for g, state in zip(grads, states):
        m = real_view(state[EXP_AVG])
        nums.append(m.mul(beta1).add_(g, alpha=1 - beta1).sign_())
        m.mul_(beta2).add_(g, alpha=1 - beta2)
    return Direction(nums, None, 1.0)


def foreach(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m = state_tensors(states, EXP_AVG)
    c = torch._foreach_mul(m, beta1)
    torch._foreach_add_(c, grads, alpha=1 - beta1)
    torch._foreach_sign_(c)
    torch._foreach_mul_(m, beta2)
    torch._foreach_add_(m, grads, alpha=1 - beta2)
    return Direction(c, None, 1.0)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, m_ptr, beta1, beta2,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    m_ptr = T.entry(m_ptr, i, TABLE, tl.float32)
    m = T.load(m_ptr, offs, mask)
    c = beta1 * m + (1 - beta1) * g
    d = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0))
    T.store(m_ptr, offs, beta2 * m + (1 - beta2) * g, mask)
    T.store(p_ptr, offs, p - lr * d, mask)


def launches(group, bucket, group_state):
    return [Launch(kernel, (bucket.flats[EXP_AVG],), tuple(group["betas"]))]


CPU = CKernel("""
    const T m = S0[j];
    const T c = m * k0 + k2 * g;
    S0[j] = m * k1 + k3 * g;
    p = p - lr_t * sign(c);
""", (EXP_AVG,), lambda group: (*group["betas"], 1 - group["betas"][0], 1 - group["betas"][1]))

RULE = Rule("lion", reference, foreach, floor_bytes=20, state=(EXP_AVG,), launches=launches, cpu=CPU)


@register
class Lion(ZooOptimizer):
    r"""Lion (Chen et al., arXiv:2302.06675): the sign of an interpolated momentum,
    ``p -= lr sign(b1 m + (1-b1) g)`` after the decoupled decay ``p *= 1 - lr wd``, then
    ``m = b2 m + (1-b2) g``. Defaults as the paper and ``lion_pytorch.Lion`` (lr 1e-4, betas
    (0.9, 0.99), no weight decay); the paper suggests an lr 3-10x smaller than AdamW's and a weight
    decay 3-10x larger."""

    rule = RULE
    paper = "Chen et al. 2023, [arXiv:2302.06675](https://arxiv.org/abs/2302.06675)"
    twin = None
    configs = [{}, {"weight_decay": 0.1, "betas": (0.95, 0.98)}, {"maximize": True}]
    diagonal_adaptive = True

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, foreach=None, fused=None,
                 maximize=False, capturable=False, differentiable=False, line_search=None):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, weight_decay=weight_decay,
                        foreach=foreach, fused=fused, maximize=maximize, capturable=capturable,
                        differentiable=differentiable, decoupled_weight_decay=True)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_betas(group["betas"], foreach=group["foreach"], capturable=group["capturable"])

    def _new_state(self, p, group):
        return {EXP_AVG: zeros_state(p)}
