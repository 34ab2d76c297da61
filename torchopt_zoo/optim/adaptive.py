"""The adaptive-gradient family: Adam, AdamW, AMSGrad, Adagrad, AdaGradNorm, RMSprop, AdaBelief,
diffGrad. Constructor arguments follow ``torch.optim`` where torch has the optimizer; the update
rules are in :mod:`torchopt_zoo.kernels.reference` (readable), ``.foreach`` (multi-tensor) and
``.triton_rules`` (the fused tier's kernels)."""

from __future__ import annotations

import torch

from .._validation import check_betas, check_choice, check_range
from ..base import ZooOptimizer
from ..kernels import foreach as _foreach
from ..kernels.fused import state_dtype
from ..kernels import reference as _reference

EPS_MODES = ("torch", "original")


def _rules(name: str) -> dict:
    return {"reference": getattr(_reference, name), "foreach": getattr(_foreach, name), "fused": name}


def _zeros(p: torch.Tensor) -> torch.Tensor:
    """Zero state for ``p`` (float32 for bf16/fp16 parameters)."""
    return torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)


class _AdamFamily(ZooOptimizer):
    """Shared construction of the optimizers with ``betas`` and ``eps`` (Adam, AdaBelief, diffGrad)."""

    def __init__(self, params, lr, betas, eps, weight_decay, *, foreach, fused, maximize,
                 decoupled_weight_decay, line_search, **extra) -> None:
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, foreach=foreach, fused=fused, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay, **extra)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_betas(group["betas"])
        check_range("eps", group["eps"], 0.0)
        if "eps_mode" in group:
            check_choice("eps_mode", group["eps_mode"], EPS_MODES)


class Adam(_AdamFamily):
    r"""Adam (Kingma & Ba, arXiv:1412.6980), a drop-in for ``torch.optim.Adam``.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr (m/bc1) / (sqrt(v/bc2) + eps)``
    with ``bc_i = 1 - b_i^t``; ``amsgrad=True`` uses ``max`` of all ``v`` so far (Reddi et al.,
    arXiv:1904.09237). ``weight_decay`` is coupled L2 (``g += wd p``) unless
    ``decoupled_weight_decay=True`` (``p *= 1 - lr wd``, AdamW). State (``step``, ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``) interchanges with torch.optim.Adam's state_dict.
    """

    _rules = _rules("adam")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, foreach=None, fused=None, maximize=False, decoupled_weight_decay=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad=amsgrad, foreach=foreach, fused=fused,
                         maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                         line_search=line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_choice("amsgrad", group["amsgrad"], (True, False))

    def _new_state(self, p, group):
        state = {"exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = _zeros(p)
        return state


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, arXiv:1711.05101): Adam with decoupled weight decay,
    ``p *= 1 - lr wd`` before the Adam step; a drop-in for ``torch.optim.AdamW`` (``wd = 1e-2``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, foreach=None, fused=None, maximize=False, line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, fused=fused,
                         maximize=maximize, decoupled_weight_decay=True, line_search=line_search)


class AdaBelief(_AdamFamily):
    r"""AdaBelief (Zhuang et al., arXiv:2010.07468): Adam with the second moment of the
    *surprise* ``g - m``: ``s = b2 s + (1-b2)(g - m)^2 + eps``.

    ``eps_mode="torch"``: ``p -= lr (m/bc1) / (sqrt(s/bc2) + eps)`` (the paper's Algorithm 2 and its
    official code); ``"original"``: ``p -= lr sqrt(bc2)/bc1 m / (sqrt(s) + eps)``.
    """

    _rules = _rules("adabelief")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, *,
                 eps_mode="torch", foreach=None, fused=None, maximize=False, decoupled_weight_decay=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, eps_mode=eps_mode, foreach=foreach, fused=fused,
                         maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                         line_search=line_search)

    def _new_state(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_var": _zeros(p)}


class DiffGrad(_AdamFamily):
    r"""diffGrad (Dubey et al., arXiv:1909.11015): Adam whose first moment is scaled by the
    friction ``xi = sigmoid(|g_{t-1} - g_t|)`` (``g_0 = 0``; ``g_{t-1}`` is a copy, never an alias
    of ``p.grad``).

    ``eps_mode="torch"``: ``p -= lr (xi m/bc1) / (sqrt(v/bc2) + eps)``; ``"original"`` (the paper's
    code and torch_optimizer.DiffGrad): ``p -= lr sqrt(bc2)/bc1 xi m / (sqrt(v) + eps)``.
    """

    _rules = _rules("diffgrad")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 eps_mode="torch", foreach=None, fused=None, maximize=False, decoupled_weight_decay=False,
                 line_search=None):
        super().__init__(params, lr, betas, eps, weight_decay, eps_mode=eps_mode, foreach=foreach, fused=fused,
                         maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                         line_search=line_search)

    def _new_state(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_sq": _zeros(p), "previous_grad": _zeros(p)}


class Adagrad(ZooOptimizer):
    r"""AdaGrad (Duchi, Hazan & Singer, JMLR 2011), a drop-in for ``torch.optim.Adagrad``:
    ``s += g^2``, ``p -= clr g / (sqrt(s) + eps)`` with ``clr = lr / (1 + (t-1) lr_decay)``."""

    _rules = _rules("adagrad")

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, foreach=None, *, fused=None, maximize=False, decoupled_weight_decay=False,
                 line_search=None):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        foreach=foreach, fused=fused, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("lr_decay", group["lr_decay"], 0.0)
        check_range("initial_accumulator_value", group["initial_accumulator_value"], 0.0)
        check_range("eps", group["eps"], 0.0)

    def _new_state(self, p, group):
        return {"sum": torch.full_like(p, group["initial_accumulator_value"], dtype=state_dtype(p),
                                       memory_format=torch.preserve_format)}


class AdaGradNorm(ZooOptimizer):
    r"""AdaGrad-Norm (Ward, Wu & Bottou, arXiv:1806.01811): one scalar step size for the whole
    param group, ``b^2 += sum_i ||g_i||^2``, ``p -= lr g / b``, ``b_0 = b0``.

    The scalar ``b^2`` is kept as ``norm_sum_sq`` in the state of the group's first parameter, so it
    is saved and restored by ``state_dict()`` like any other state.
    """

    _group_wide_state = True  # the norm spans the group: one fused bucket
    _rules = _rules("adagrad_norm")

    def __init__(self, params, lr=1.0, b0=1e-2, weight_decay=0.0, *, foreach=None, fused=None, maximize=False,
                 decoupled_weight_decay=False, line_search=None):
        defaults = dict(lr=lr, b0=b0, weight_decay=weight_decay, foreach=foreach, fused=fused,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("b0", group["b0"], 0.0, low_open=True)

    def _new_state(self, p, group):
        return {}

    def _shared_state(self, group):
        group_state = self._group_state(group)
        if "norm_sum_sq" not in group_state:
            first = group["params"][0]
            dtype = state_dtype(first.real if first.is_complex() else first)
            group_state["norm_sum_sq"] = torch.tensor(float(group["b0"]) ** 2, dtype=dtype,
                                                      device=first.device)
        return group_state

    def _direction(self, rule, group, params, grads, states, steps):
        return rule(group, params, grads, states, steps, self._shared_state(group))


class RMSprop(ZooOptimizer):
    r"""RMSProp (Tieleman & Hinton, 2012), a drop-in for ``torch.optim.RMSprop``:
    ``v = a v + (1-a) g^2``; ``avg = sqrt(v) + eps`` (``centered``: ``sqrt(v - ga^2) + eps`` with
    ``ga = a ga + (1-a) g``); ``p -= lr g / avg``, or with ``momentum``
    ``buf = mu buf + g / avg``, ``p -= lr buf``."""

    _rules = _rules("rmsprop")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, foreach=None, maximize=False, *, fused=None, decoupled_weight_decay=False,
                 line_search=None):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, foreach=foreach, fused=fused, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, line_search)

    def _check_group(self, group) -> None:
        super()._check_group(group)
        check_range("alpha", group["alpha"], 0.0, 1.0, high_open=False)
        check_range("eps", group["eps"], 0.0)
        check_range("momentum", group["momentum"], 0.0)
        check_choice("centered", group["centered"], (True, False))

    def _new_state(self, p, group):
        state = {"square_avg": _zeros(p)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = _zeros(p)
        if group["centered"]:
            state["grad_avg"] = _zeros(p)
        return state
