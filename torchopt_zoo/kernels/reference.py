"""The reference tier: every direction rule as readable per-tensor math.

Each rule takes ``(group, params, grads, states, steps)`` — the gradients already negated for
``maximize`` and with coupled weight decay added, the per-parameter state dicts, and the step
count ``t`` (from 1) of each parameter — updates the state in place and returns a
:class:`~torchopt_zoo.kernels.direction.Direction`. The faster tiers are checked against these.
"""

from __future__ import annotations

import math

import torch

from .direction import Direction, real_view


def adam_scaling(v, t, beta1, beta2, eps, eps_mode):
    """Denominator and coefficient of an Adam-type step from the second moment ``v``.

    ``torch``: ``d = -(m/bc1) / (sqrt(v/bc2) + eps)``;
    ``original``: ``d = -(sqrt(bc2)/bc1) * m / (sqrt(v) + eps)`` (eps on the raw root).
    """
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    if eps_mode == "torch":
        return (v.sqrt() / math.sqrt(bc2)).add_(eps), 1 / bc1
    return v.sqrt().add_(eps), math.sqrt(bc2) / bc1


def adam(group, params, grads, states, steps):
    """Adam (Kingma & Ba, 1412.6980), AMSGrad (Reddi et al., 1904.09237):
    ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``; ``vmax = max(vmax, v)`` (amsgrad);
    ``d = -(m/bc1) / (sqrt(v/bc2) + eps)``."""
    beta1, beta2 = group["betas"]
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        m, v = real_view(state["exp_avg"]), real_view(state["exp_avg_sq"])
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if group["amsgrad"]:
            vmax = real_view(state["max_exp_avg_sq"])
            torch.maximum(vmax, v, out=vmax)
            v = vmax
        denom, coef = adam_scaling(v, t, beta1, beta2, group["eps"], "torch")
        nums.append(m), denoms.append(denom), coefs.append(coef)
    return Direction(nums, denoms, coefs)


def adabelief(group, params, grads, states, steps):
    """AdaBelief (Zhuang et al., 2010.07468): ``m = b1 m + (1-b1) g``;
    ``s = b2 s + (1-b2) (g - m)^2 + eps``; then the Adam step with ``s`` in place of ``v``."""
    beta1, beta2 = group["betas"]
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        m, s = real_view(state["exp_avg"]), real_view(state["exp_avg_var"])
        m.lerp_(g, 1 - beta1)
        r = g - m
        s.mul_(beta2).addcmul_(r, r, value=1 - beta2).add_(group["eps"])
        denom, coef = adam_scaling(s, t, beta1, beta2, group["eps"], group["eps_mode"])
        nums.append(m), denoms.append(denom), coefs.append(coef)
    return Direction(nums, denoms, coefs)


def diffgrad(group, params, grads, states, steps):
    """diffGrad (Dubey et al., 1909.11015): Adam's moments, and the first moment scaled by the
    friction ``xi = sigmoid(|g_prev - g|)`` (``g_prev`` a copy of the last gradient, 0 at first)."""
    beta1, beta2 = group["betas"]
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        m, v = real_view(state["exp_avg"]), real_view(state["exp_avg_sq"])
        prev = real_view(state["previous_grad"])
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        xi = torch.sigmoid((prev - g).abs_())
        prev.copy_(g)
        denom, coef = adam_scaling(v, t, beta1, beta2, group["eps"], group["eps_mode"])
        nums.append(m * xi), denoms.append(denom), coefs.append(coef)
    return Direction(nums, denoms, coefs)


def adagrad(group, params, grads, states, steps):
    """AdaGrad (Duchi, Hazan & Singer 2011): ``s += g^2``;
    ``d = -g / (sqrt(s) + eps) / (1 + (t-1) lr_decay)``."""
    nums, denoms, coefs = [], [], []
    for g, state, t in zip(grads, states, steps):
        s = real_view(state["sum"])
        s.addcmul_(g, g, value=1)
        nums.append(g), denoms.append(s.sqrt().add_(group["eps"]))
        coefs.append(1 / (1 + (t - 1) * group["lr_decay"]))
    return Direction(nums, denoms, coefs)


def adagrad_norm(group, params, grads, states, steps, group_state):
    """AdaGrad-Norm (Ward, Wu & Bottou, 1806.01811): one scalar for the whole group,
    ``b^2 += sum_i ||g_i||^2``; ``d = -g / b``."""
    b2 = group_state["norm_sum_sq"]
    for g in grads:
        b2.add_(g.square().sum().to(b2.device))
    b = b2.sqrt()
    return Direction([g / b.to(g.device) for g in grads], None, 1.0)


def rmsprop(group, params, grads, states, steps):
    """RMSProp (Hinton, lecture 6e), exactly as torch.optim.RMSprop: ``v = a v + (1-a) g^2``;
    centered: ``avg = sqrt(v - ga^2) + eps`` with ``ga = a ga + (1-a) g``, else ``sqrt(v) + eps``;
    ``d = -g/avg``, or with momentum ``buf = mu buf + g/avg``, ``d = -buf``."""
    alpha = group["alpha"]
    nums, denoms = [], []
    for g, state in zip(grads, states):
        v = real_view(state["square_avg"])
        v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if group["centered"]:
            ga = real_view(state["grad_avg"])
            ga.lerp_(g, 1 - alpha)
            avg = v.addcmul(ga, ga, value=-1).sqrt_()
        else:
            avg = v.sqrt()
        avg.add_(group["eps"])
        if group["momentum"] > 0:
            buf = real_view(state["momentum_buffer"])
            buf.mul_(group["momentum"]).addcdiv_(g, avg)
            nums.append(buf)
        else:
            nums.append(g), denoms.append(avg)
    return Direction(nums, denoms if denoms else None, 1.0)


def gd(group, params, grads, states, steps):
    """Gradient descent with optional heavy-ball momentum, as torch.optim.SGD:
    ``buf = mu buf + (1 - dampening) g`` (``buf = g`` at the first step);
    ``d = -buf``, or ``d = -(g + mu buf)`` with nesterov."""
    mu = group["momentum"]
    if mu == 0:
        return Direction(list(grads), None, 1.0)
    nums = []
    for g, state, t in zip(grads, states, steps):
        buf = real_view(state["momentum_buffer"])
        if t == 1:
            buf.copy_(g)
        else:
            buf.mul_(mu).add_(g, alpha=1 - group["dampening"])
        nums.append(g.add(buf, alpha=mu) if group["nesterov"] else buf)
    return Direction(nums, None, 1.0)
