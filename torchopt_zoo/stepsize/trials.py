"""The closure protocol of a line-search step: how trial points are evaluated.

A searched step calls the closure once with gradients enabled (the closure runs ``backward()``, as
for any torch optimizer), then once per trial *forward only*, under ``torch.no_grad()``. A closure
that should serve both calls backward only when gradients are enabled::

    def closure():
        loss = loss_fn(model(x), y)
        if torch.is_grad_enabled():
            optimizer.zero_grad()
            loss.backward()
        return loss

Every call starts from the same random state (dropout draws the same mask in every trial), and the
buffers of every module that runs forward in a trial (BatchNorm running statistics) are put back
after it, so only the gradient evaluation moves them. After the step the random state is the one
the gradient evaluation left, as if the closure ran once.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
from torch import Tensor

_BACKWARD_IN_TRIAL = (
    "A line-search trial ran backward(): trials evaluate the closure forward-only under "
    "torch.no_grad(). Call backward only when gradients are enabled, e.g.\n"
    "    loss = loss_fn(model(x), y)\n"
    "    if torch.is_grad_enabled():\n"
    "        optimizer.zero_grad(); loss.backward()\n"
    "    return loss")


class LineSearchWarning(UserWarning):
    """A line search failed; the step was not taken (parameters and state are unchanged)."""


class LineSearchError(RuntimeError):
    """A line search failed with ``on_failure="raise"``; parameters and state are unchanged."""


def report_failure(message: str, on_failure: str) -> None:
    """Raise :class:`LineSearchError` (``on_failure="raise"``) or warn with :class:`LineSearchWarning`."""
    if on_failure == "raise":
        raise LineSearchError(message)
    warnings.warn(message, LineSearchWarning, stacklevel=user_stacklevel())


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside torchopt_zoo and torch
    (the user's ``opt.step(closure)`` line), however deep the call came from."""
    inside = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


class RngState:
    """The torch random state of the CPU and of the given CUDA devices, to put back later."""

    def __init__(self, devices) -> None:
        self.cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                            for d in devices if d.type == "cuda"})
        self.cpu = torch.get_rng_state()
        self.gpu = [torch.cuda.get_rng_state(i) for i in self.cuda]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for i, state in zip(self.cuda, self.gpu):
            torch.cuda.set_rng_state(state, i)


class BufferGuard:
    """Used as ``with BufferGuard():`` around a trial: every module that runs forward inside has its
    buffers (BatchNorm running statistics) copied first, through a global forward pre-hook, and
    put back on exit. No module needs to be named; only modules called inside are touched."""

    def __enter__(self) -> "BufferGuard":
        self.saved: dict[int, list[tuple[Tensor, Tensor]]] = {}

        def remember(module, args):
            if id(module) not in self.saved:
                self.saved[id(module)] = [(b, b.clone()) for b in module.buffers(recurse=False)]
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(remember)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        with torch.no_grad():
            for pairs in self.saved.values():
                for buffer, value in pairs:
                    buffer.copy_(value)


def evaluate_forward(closure) -> float:
    """``closure()`` under ``torch.no_grad()``, as a float (one host read per trial)."""
    with torch.no_grad():
        try:
            value = closure()
        except RuntimeError as error:
            if "does not require grad" in str(error) or "grad_fn" in str(error):
                raise RuntimeError(_BACKWARD_IN_TRIAL) from error
            raise
    if isinstance(value, Tensor):
        return float(value.detach())
    return float(value)


class StateSnapshot:
    """A copy of the optimizer state of ``params``; :meth:`restore` puts it back in place (the
    same tensor objects, so views such as flat buffers stay valid), removing what was added."""

    def __init__(self, state, params) -> None:
        self.state = state
        self.saved = {p: ({k: v.clone() if isinstance(v, Tensor) else v for k, v in state[p].items()}
                          if p in state else None) for p in params}

    def restore(self) -> None:
        for p, saved in self.saved.items():
            if saved is None:
                self.state.pop(p, None)
                continue
            current = self.state[p]
            for key in [k for k in current if k not in saved]:
                del current[key]
            for key, value in saved.items():
                now = current.get(key)
                if isinstance(value, Tensor) and isinstance(now, Tensor) and now.shape == value.shape:
                    now.copy_(value)
                else:
                    current[key] = value
