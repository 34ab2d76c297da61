"""Gradient descent with heavy-ball momentum, as ``torch.optim.SGD``."""

from __future__ import annotations

import torch

from .._validation import check_choice, check_range
from ..base import ZooOptimizer
from ..kernels import foreach as _foreach
from ..kernels.fused import state_dtype
from ..kernels import reference as _reference


class GD(ZooOptimizer):
    r"""Gradient descent (Cauchy 1847) with optional heavy-ball momentum (Polyak 1964).

    As ``torch.optim.SGD``: ``buf = mu buf + (1 - dampening) g`` (``buf = g`` at the first step),
    ``p -= lr buf`` (``nesterov``: ``p -= lr (g + mu buf)``); ``momentum=0`` is plain ``p -= lr g``.
    """

    _rules = {"reference": _reference.gd, "foreach": _foreach.gd, "fused": "gd"}

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, foreach=None, fused=None, maximize=False, decoupled_weight_decay=False,
                 line_search=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, foreach=foreach, fused=fused, maximize=maximize,
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
        return {"momentum_buffer": torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)}
