"""AdaGrad-Norm in every tier (Ward, Wu & Bottou, arXiv:1806.01811; docs/algorithms.md,
"AdaGrad-Norm"): one scalar for the whole group, ``b^2 += sum_i |g_i|^2``, ``p -= lr g / b``."""

from __future__ import annotations

import torch

from .._validation import check_range
from ..core.direction import Direction
from ..core.optimizer import ZooOptimizer
from ..core.rule import CKernel, Launch, Rule, register
from ..core.sharding import SUM_OVER_SHARDS
from ..tiers import triton as T
from ..core.state import state_dtype
from ..tiers.triton import jit, tl

NORM_SUM_SQ = "norm_sum_sq"  # group-wide: in the state of the group's first parameter


def _sum_over_shards(group_state, x):
    """``x`` summed over the shards of the group's parameters (FSDP2), or ``x`` as it is."""
    reduce = group_state.get(SUM_OVER_SHARDS)
    return x if reduce is None else reduce(x)


def reference(group, params, grads, states, steps, group_state):
    b2 = group_state[NORM_SUM_SQ]
    b2.add_(_sum_over_shards(group_state, sum(g.square().sum().to(b2.device) for g in grads)))
    b = b2.sqrt()
    return Direction([g / b.to(g.device) for g in grads], None, 1.0)


def foreach(group, params, grads, states, steps, group_state):
    b2 = group_state[NORM_SUM_SQ]
    norms = torch._foreach_norm(grads)
    b2.add_(_sum_over_shards(group_state, torch.stack([n.to(b2.device) for n in norms]).square().sum()))
    b = b2.sqrt()
    if {g.device for g in grads} == {b.device}:
        return Direction(torch._foreach_div(grads, b), None, 1.0)
    return Direction([g / b.to(g.device) for g in grads], None, 1.0)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, b2_ptr,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr,
           WD: tl.constexpr, LR_PTR: tl.constexpr, NORM_PASS: tl.constexpr,
           LARGE: tl.constexpr, BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    """Two launches: ``NORM_PASS``: ``b^2 += sum g^2`` (one atomic add per block); then
    ``p -= lr g / sqrt(b^2)``."""
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    if NORM_PASS:
        tl.atomic_add(b2_ptr, tl.sum(g * g, axis=0))
    else:
        T.store(p_ptr, offs, p - lr * g / tl.sqrt(tl.load(b2_ptr)), mask)


def launches(group, bucket, group_state):
    b2 = (group_state[NORM_SUM_SQ],)
    return [Launch(kernel, b2, (), {"NORM_PASS": True}), Launch(kernel, b2, (), {"NORM_PASS": False})]


CPU = CKernel("p = p - lr_t * (g / R);", reduce_term="g * g", reduced="*group_scalar += (T)total; R = sqrt(*group_scalar);",
              group_scalar=lambda group_state: group_state[NORM_SUM_SQ])

RULE = Rule("adagrad_norm", reference, foreach, floor_bytes=16, state=(), launches=launches, group_wide=True,
            cpu=CPU)


@register
class AdaGradNorm(ZooOptimizer):
    r"""AdaGrad-Norm (Ward, Wu & Bottou, arXiv:1806.01811): one scalar step size for the whole
    param group, ``b^2 += sum_i ||g_i||^2``, ``p -= lr g / b``, ``b_0 = b0``.

    The scalar ``b^2`` is kept as ``norm_sum_sq`` in the state of the group's first parameter, so it
    is saved and restored by ``state_dict()`` like any other state.
    """

    rule = RULE
    paper = "Ward, Wu & Bottou 2019, [arXiv:1806.01811](https://arxiv.org/abs/1806.01811)"
    twin = None
    configs = [{}, {"weight_decay": 0.1, "b0": 1.0}]

    def __init__(self, params, lr=1.0, b0=1e-2, weight_decay=0.0, *, foreach=None, fused=None, maximize=False,
                 capturable=False, differentiable=False,
                 decoupled_weight_decay=False, line_search=None):
        defaults = dict(lr=lr, b0=b0, weight_decay=weight_decay, foreach=foreach, fused=fused,
                        maximize=maximize, capturable=capturable, differentiable=differentiable,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("b0", group["b0"], 0.0, low_open=True)

    def _new_state(self, p, group):
        # with the group's first parameter (under torch.compile, while tracing: no recompile later)
        return {NORM_SUM_SQ: self._initial_norm_sum_sq(group)} if p is group["params"][0] else {}

    def _shared_state(self, group):
        group_state = self._group_state(group)
        if NORM_SUM_SQ not in group_state:  # the first parameter had no gradient at its first step
            group_state[NORM_SUM_SQ] = self._initial_norm_sum_sq(group)
        return group_state

    @staticmethod
    def _initial_norm_sum_sq(group):
        first = group["params"][0]
        dtype = state_dtype(first.real if first.is_complex() else first)
        return torch.tensor(float(group["b0"]) ** 2, dtype=dtype, device=first.device)
