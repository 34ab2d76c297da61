"""Gradient descent with heavy-ball momentum in every tier (docs/algorithms.md, "GD"), as
torch.optim.SGD: ``buf = mu buf + (1 - dampening) g`` (``buf = g`` at the first step);
``d = -buf``, or ``d = -(g + mu buf)`` with nesterov."""

from __future__ import annotations

import torch

from .._validation import check_choice, check_range
from ..core.direction import Direction, apply_reference, real_view, state_tensors
from ..core.optimizer import ZooOptimizer
from ..core.state import zeros_state
from ..core.rule import CKernel, Launch, Rule, register
from ..tiers import triton as T
from ..tiers.triton import jit, tl

MOMENTUM_BUFFER = "momentum_buffer"


def reference(group, params, grads, states, steps):
    mu = group["momentum"]
    if mu == 0:
        return Direction(list(grads), None, 1.0)
    nums = []
    for g, state, t in zip(grads, states, steps):
        buf = real_view(state[MOMENTUM_BUFFER])
        if t == 1:
            buf.copy_(g)
        else:
            buf.mul_(mu).add_(g, alpha=1 - group["dampening"])
        nums.append(g.add(buf, alpha=mu) if group["nesterov"] else buf)
    return Direction(nums, None, 1.0)


def foreach(group, params, grads, states, steps):
    mu = group["momentum"]
    if mu == 0:
        return Direction(list(grads), None, 1.0)
    buf = state_tensors(states, MOMENTUM_BUFFER)
    if isinstance(steps[0], torch.Tensor):  # on the device (compiled, capturable): no host read
        torch._foreach_mul_(buf, mu)  # the buffer starts at zero: step 1 gives (1 - dampening) g ...
        torch._foreach_add_(buf, grads, alpha=1 - group["dampening"])
        if group["dampening"]:  # ... which is g itself only without dampening
            for b, g, t in zip(buf, grads, steps):
                b.copy_(torch.where(t == 1, g, b))
        return Direction(torch._foreach_add(grads, buf, alpha=mu) if group["nesterov"] else buf, None, 1.0)
    fresh = [i for i, t in enumerate(steps) if t == 1]
    if fresh:
        torch._foreach_copy_([buf[i] for i in fresh], [grads[i] for i in fresh])
    old = [i for i, t in enumerate(steps) if t != 1]
    if old:
        ob = [buf[i] for i in old]
        torch._foreach_mul_(ob, mu)
        torch._foreach_add_(ob, [grads[i] for i in old], alpha=1 - group["dampening"])
    if group["nesterov"]:
        return Direction(torch._foreach_add(grads, buf, alpha=mu), None, 1.0)
    return Direction(buf, None, 1.0)


@jit
def kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, buf_ptr, momentum, dampening,
           HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
           LR_PTR: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, LARGE: tl.constexpr,
           BLOCK: tl.constexpr,
           TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    p_ptr, i, offs, mask, lr, p, g = T.head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE, HAS_INF,
                                            MAXIMIZE, WD, LR_PTR, LARGE, BLOCK, TABLE, DTYPE, ROW)
    buf_ptr = T.entry(buf_ptr, i, TABLE, tl.float32)
    d = g
    if MOMENTUM:
        buf = T.load(buf_ptr, offs, mask)
        buf = tl.where(tl.load(step_ptr) == 1, g, momentum * buf + (1 - dampening) * g)
        T.store(buf_ptr, offs, buf, mask)
        d = buf
        if NESTEROV:
            d = g + momentum * buf
    T.store(p_ptr, offs, p - lr * d, mask)


def launches(group, bucket, group_state):
    return [Launch(kernel, (bucket.flats.get(MOMENTUM_BUFFER),), (group["momentum"], group["dampening"]),
                   {"MOMENTUM": group["momentum"] > 0, "NESTEROV": group["nesterov"]})]


def torch_kernel(group):
    """torch's single-pass fused SGD (``torch._fused_sgd_``), which knows coupled weight decay only.
    Its ``is_first_step`` (``buf = g``) holds for the whole list, so parameters at their first step
    and the others take one call each."""
    if group["decoupled_weight_decay"] and group["weight_decay"]:
        return None
    mu = group["momentum"]

    def call(params, grads, bufs, lr, first, found_inf):
        torch._fused_sgd_(params, grads, bufs, weight_decay=group["weight_decay"], momentum=mu, lr=lr,
                          dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                          is_first_step=first, grad_scale=None, found_inf=found_inf)

    def run(params, grads, states, steps, lr, grad_scale, found_inf):
        if not mu:
            return call(params, grads, [], lr, False, found_inf)
        first = (torch.stack(steps) == 1).tolist()  # the step counts are on the CPU here
        for flag in (True, False):
            idx = [i for i, f in enumerate(first) if f == flag]
            if idx:
                call([params[i] for i in idx], [grads[i] for i in idx],
                     [states[i][MOMENTUM_BUFFER] for i in idx], lr, flag, found_inf)
    return run


def sparse(group, p, g, state, t, lr):
    """A sparse gradient, as torch.optim.SGD takes it: ``p -= lr g`` touches only the gradient's
    rows; with momentum the buffer is dense, so the reference rule runs on the dense gradient."""
    if group["momentum"] == 0:
        p.add_(g, alpha=-lr)
        return
    apply_reference([p], reference(group, [p], [g.to_dense()], [state], [t]), lr)


CPU = CKernel("""
#if MOMENTUM
    const T buf = u0 != 0 ? g : S0[j] * k0 + k1 * g;  /* the first step: buf = g */
    S0[j] = buf;
    const T d = NESTEROV ? g + k0 * buf : buf;
#else
    const T d = g;
#endif
    p = p - lr_t * d;
""", (MOMENTUM_BUFFER,), lambda group: (group["momentum"], 1 - group["dampening"]), "ui[0] = t == 1;",
              lambda group: {"MOMENTUM": group["momentum"] > 0, "NESTEROV": group["nesterov"]})

RULE = Rule("gd", reference, foreach, floor_bytes=12, state=(MOMENTUM_BUFFER,), launches=launches,
            torch_kernel=torch_kernel, sparse=sparse, cpu=CPU)


@register
class GD(ZooOptimizer):
    r"""Gradient descent (Cauchy 1847) with optional heavy-ball momentum (Polyak 1964).

    As ``torch.optim.SGD``: ``buf = mu buf + (1 - dampening) g`` (``buf = g`` at the first step),
    ``p -= lr buf`` (``nesterov``: ``p -= lr (g + mu buf)``); ``momentum=0`` is plain ``p -= lr g``.
    """

    rule = RULE
    paper = "Cauchy 1847; heavy ball: Polyak 1964; Nesterov 1983"
    twin = torch.optim.SGD
    configs = [{}, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.5, "dampening": 0.1}]

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, foreach=None, fused=None, maximize=False, capturable=False,
                 differentiable=False, decoupled_weight_decay=False,
                 line_search=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, foreach=foreach, fused=fused, maximize=maximize, capturable=capturable,
                        differentiable=differentiable,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("momentum", group["momentum"], 0.0)
        check_range("dampening", group["dampening"], 0.0)
        check_choice("nesterov", group["nesterov"], (True, False))
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")

    def _new_state(self, p, group):
        if group["momentum"] == 0:
            return {}
        return {MOMENTUM_BUFFER: zeros_state(p)}
