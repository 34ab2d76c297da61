"""The multi-tensor tier: the rules of :mod:`.reference` with ``torch._foreach_*`` kernels.

Same signatures and results as the reference rules (checked by tests/test_tiers.py); one kernel
launch per operation for a whole param group instead of one per tensor.
"""

from __future__ import annotations

import math

import torch

from .direction import Direction, state_tensors


def _per_step(steps, fn):
    """``fn(t)`` for each parameter's step, a single float when all steps agree (the usual case)."""
    if all(t == steps[0] for t in steps):
        return fn(steps[0])
    cache = {}
    return [cache.setdefault(t, fn(t)) for t in steps]


def adam_scaling(v, steps, beta1, beta2, eps, eps_mode):
    """List form of :func:`.reference.adam_scaling`."""
    denom = torch._foreach_sqrt(v)
    if eps_mode == "torch":
        torch._foreach_div_(denom, _per_step(steps, lambda t: math.sqrt(1 - beta2 ** t)))
        torch._foreach_add_(denom, eps)
        return denom, _per_step(steps, lambda t: 1 / (1 - beta1 ** t))
    torch._foreach_add_(denom, eps)
    return denom, _per_step(steps, lambda t: math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t))


def _moments(grads, states, beta1, beta2, v_key):
    m, v = state_tensors(states, "exp_avg"), state_tensors(states, v_key)
    torch._foreach_lerp_(m, grads, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    return m, v


def adam(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m, v = _moments(grads, states, beta1, beta2, "exp_avg_sq")
    torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
    if group["amsgrad"]:
        vmax = state_tensors(states, "max_exp_avg_sq")
        torch._foreach_maximum_(vmax, v)
        v = vmax
    denom, coef = adam_scaling(v, steps, beta1, beta2, group["eps"], "torch")
    return Direction(m, denom, coef)


def adabelief(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m, s = _moments(grads, states, beta1, beta2, "exp_avg_var")
    r = torch._foreach_sub(grads, m)
    torch._foreach_addcmul_(s, r, r, 1 - beta2)
    torch._foreach_add_(s, group["eps"])
    denom, coef = adam_scaling(s, steps, beta1, beta2, group["eps"], group["eps_mode"])
    return Direction(m, denom, coef)


def diffgrad(group, params, grads, states, steps):
    beta1, beta2 = group["betas"]
    m, v = _moments(grads, states, beta1, beta2, "exp_avg_sq")
    torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
    prev = state_tensors(states, "previous_grad")
    xi = torch._foreach_sub(prev, grads)
    torch._foreach_abs_(xi)
    torch._foreach_sigmoid_(xi)
    torch._foreach_copy_(prev, grads)
    torch._foreach_mul_(xi, m)
    denom, coef = adam_scaling(v, steps, beta1, beta2, group["eps"], group["eps_mode"])
    return Direction(xi, denom, coef)


def adagrad(group, params, grads, states, steps):
    s = state_tensors(states, "sum")
    torch._foreach_addcmul_(s, grads, grads, 1)
    denom = torch._foreach_sqrt(s)
    torch._foreach_add_(denom, group["eps"])
    return Direction(list(grads), denom, _per_step(steps, lambda t: 1 / (1 + (t - 1) * group["lr_decay"])))


def adagrad_norm(group, params, grads, states, steps, group_state):
    b2 = group_state["norm_sum_sq"]
    norms = torch._foreach_norm(grads)
    b2.add_(torch.stack([n.to(b2.device) for n in norms]).square().sum())
    b = b2.sqrt()
    devices = {g.device for g in grads}
    if devices == {b.device}:
        return Direction(torch._foreach_div(grads, b), None, 1.0)
    return Direction([g / b.to(g.device) for g in grads], None, 1.0)


def rmsprop(group, params, grads, states, steps):
    alpha = group["alpha"]
    v = state_tensors(states, "square_avg")
    torch._foreach_mul_(v, alpha)
    torch._foreach_addcmul_(v, grads, grads, 1 - alpha)
    if group["centered"]:
        ga = state_tensors(states, "grad_avg")
        torch._foreach_lerp_(ga, grads, 1 - alpha)
        avg = torch._foreach_addcmul(v, ga, ga, -1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(v)
    torch._foreach_add_(avg, group["eps"])
    if group["momentum"] > 0:
        buf = state_tensors(states, "momentum_buffer")
        torch._foreach_mul_(buf, group["momentum"])
        torch._foreach_addcdiv_(buf, grads, avg)
        return Direction(buf, None, 1.0)
    return Direction(list(grads), avg, 1.0)


def gd(group, params, grads, states, steps):
    mu = group["momentum"]
    if mu == 0:
        return Direction(list(grads), None, 1.0)
    buf = state_tensors(states, "momentum_buffer")
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
