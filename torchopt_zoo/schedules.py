"""Learning-rate schedules: linear decay with warm-up, and refinement from recorded gradient norms.

Defazio, Cutkosky, Mehta & Mishchenko, "When, Why and How Much? Adaptive Learning Rate Scheduling
by Refinement" (arXiv:2310.07831; v2 "Optimal Linear Decay Learning Rate Schedules and Further
Refinements"). Linear decay is the worst-case optimal schedule for the last iterate; refinement
reshapes it from the gradient norms of a previous run of the same length.

The schedulers are ``torch.optim.lr_scheduler.LRScheduler`` subclasses, so they work with any
torch optimizer (zoo or not), per-group base learning rates, tensor learning rates,
``ChainedScheduler`` and ``state_dict()``::

    recorder = GradNormRecorder(opt)                       # run 1: any schedule
    ...train T steps...
    recorder.save("norms.npz")
    norms, kind = GradNormRecorder.load("norms.npz")
    sched = RefinedSchedule(opt2, grad_norms=norms)        # run 2
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from ._validation import check_choice, check_int, check_range

# Optimizers that scale each coordinate by its own statistics: refinement uses l1 norms, power 1.
_ADAM_LIKE_TORCH = tuple(getattr(torch.optim, n) for n in
                         ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "RMSprop",
                          "Adadelta", "SparseAdam") if hasattr(torch.optim, n))


def is_adam_like(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is diagonal-adaptive (Adam/AdaGrad/RMSProp family, torch or zoo)."""
    return isinstance(optimizer, _ADAM_LIKE_TORCH) or getattr(type(optimizer), "diagonal_adaptive", False)


class _FactorSchedule(LRScheduler):
    """``lr_t = base_lr * factor(t)``, written in torch's chainable form (each step multiplies
    the current lr by ``factor(t) / factor(t-1)``) and in closed form."""

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        prev = self.factor(t - 1) if t > 0 else 1.0
        if prev == 0.0:  # a multiplicative chain cannot leave 0: restart from the base lrs
            return [base * self.factor(t) for base in self.base_lrs]
        ratio = self.factor(t) / prev
        return [group["lr"] * ratio for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


class LinearDecay(_FactorSchedule):
    r"""Linear decay with optional linear warm-up.

    ``factor(t) = (t + 1) / W`` for ``t < W`` (warm-up, reaching the base lr at ``t = W - 1``),
    then ``r + (1 - r) (1 - (t - W) / (T - W))`` for ``W <= t < T`` (``r = final_lr_ratio``;
    with ``W = 0``, ``r = 0``: the paper's ``lr (1 - t/T)``), and ``r`` after ``T``.
    """

    def __init__(self, optimizer, total_steps: int, warmup_steps: int = 0,
                 final_lr_ratio: float = 0.0, last_epoch: int = -1) -> None:
        check_int("total_steps", total_steps, 1)
        check_int("warmup_steps", warmup_steps, 0)
        if total_steps <= warmup_steps:
            raise ValueError(f"Invalid total_steps: {total_steps}; it must exceed warmup_steps "
                             f"({warmup_steps})")
        check_range("final_lr_ratio", final_lr_ratio, 0.0, 1.0, high_open=False)
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.final_lr_ratio = float(final_lr_ratio)
        check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        T, W, r = self.total_steps, self.warmup_steps, self.final_lr_ratio
        if t < W:
            return (t + 1) / W
        if t >= T:
            return r
        return r + (1.0 - r) * (1.0 - (t - W) / (T - W))


class GradNormRecorder:
    """Records the global gradient norm of every ``optimizer.step()`` (a step pre-hook).

    The norm (``"l2"``: ``sqrt(sum |g|^2)``, ``"l1"``: ``sum |g|`` over every parameter with a
    gradient) stays on the gradients' device; values are moved to the host in blocks of
    ``block`` steps, so recording costs no host-device sync per step. ``norm=None`` follows the
    optimizer: ``"l1"`` for Adam-like (diagonal-adaptive) optimizers, else ``"l2"``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, norm: str | None = None,
                 block: int = 256) -> None:
        norm = norm or ("l1" if is_adam_like(optimizer) else "l2")
        check_choice("norm", norm, ("l2", "l1"))
        check_int("block", block, 1)
        self.optimizer, self.norm, self.block = optimizer, norm, block
        self._pending: list[torch.Tensor] = []
        self._host: list[np.ndarray] = []
        self._handle = optimizer.register_step_pre_hook(self._record)

    def _record(self, optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        order = 2.0 if self.norm == "l2" else 1.0
        per_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            per_device.setdefault(g.device, []).append(g)
        parts = [torch.stack(torch._foreach_norm(gs, order)).to(torch.float64) for gs in per_device.values()]
        device = grads[0].device
        norms = torch.cat([p.to(device) for p in parts])
        self._pending.append(norms.norm() if self.norm == "l2" else norms.sum())
        if len(self._pending) >= self.block:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._host.append(torch.stack(self._pending).cpu().numpy())
            self._pending = []

    @property
    def norms(self) -> np.ndarray:
        """Every recorded norm so far, in float64 (one host transfer for the pending block)."""
        self._flush()
        return np.concatenate(self._host) if self._host else np.zeros(0)

    def save(self, path: str | os.PathLike) -> None:
        """Save the norms and their kind to an ``.npz`` file (read it back with :meth:`load`)."""
        np.savez(path, norms=self.norms, norm=self.norm)

    @staticmethod
    def load(path: str | os.PathLike) -> tuple[np.ndarray, str]:
        """``(norms, norm)`` from a file written by :meth:`save`."""
        with np.load(path) as data:
            return data["norms"], str(data["norm"])

    def remove(self) -> None:
        """Stop recording."""
        self._handle.remove()


def refine(grad_norms, tau: float = 0.1, power: int = 2, total_steps: int | None = None) -> np.ndarray:
    r"""The refined schedule (multipliers of the base lr) from a previous run's gradient norms.

    1. smooth ``G`` with a median filter of width ``w = 2 floor(tau T / 2) + 1``, padded as the
       authors do: the end extended by ``2w`` values reflected about the last one, the start by
       the first value repeated (``scipy.ndimage.median_filter(np.pad(G, (0, 2w), "reflect"),
       w, mode="nearest")[:T]``);
    2. weights ``w_t = G_t^{-power}`` (``power=2`` with l2 norms for SGD-like optimizers,
       ``power=1`` with l1 norms for Adam-like ones);
    3. ``s_t = w_t sum_{k > t} w_k`` (the last step is exactly 0);
    4. normalise to a peak of 1, and resample linearly to ``total_steps`` if given.

    Constant norms give exactly linear decay ``1 - t/(T-1)``; norms that fall early give a warm-up.
    """
    G = np.asarray(grad_norms, dtype=np.float64).reshape(-1)
    check_range("tau", tau, 0.0, 1.0, low_open=True, high_open=False)
    check_choice("power", power, (1, 2))
    bad = np.flatnonzero(~np.isfinite(G) | (G <= 0))
    if bad.size:
        raise ValueError(f"Invalid grad_norms: entry {bad[0]} is {float(G[bad[0]])!r}; every norm must "
                         "be finite and > 0")
    T = G.size
    width = 2 * math.floor(tau * T / 2) + 1
    if T < max(width, 2):
        raise ValueError(f"Invalid grad_norms: {T} values, fewer than the filter width {width} "
                         "(or than 2); record more steps or lower tau")
    half = width // 2
    padded = np.concatenate([np.full(half, G[0]), np.pad(G, (0, 2 * width), mode="reflect")[:T + half]])
    smooth = np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)
    w = smooth ** (-float(power))
    tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{k > t} w_k
    schedule = w * tail
    schedule /= schedule.max()
    if total_steps is not None and total_steps != T:
        check_int("total_steps", total_steps, 2)
        schedule = np.interp(np.linspace(0, 1, total_steps), np.linspace(0, 1, T), schedule)
        schedule /= schedule.max()
    return schedule


class RefinedSchedule(_FactorSchedule):
    """``lr_t = base_lr * refine(grad_norms)[t]``; after the schedule's last step the lr stays 0
    (the refined schedule ends there) and a ``UserWarning`` says so, once.

    Give the norms of a previous run as ``grad_norms`` (array) or ``recorder``
    (a :class:`GradNormRecorder`). ``power=None`` follows the norms' kind when known (recorder:
    ``l2`` -> 2, ``l1`` -> 1), else the optimizer (Adam-like -> 1, else 2).
    """

    def __init__(self, optimizer, grad_norms=None, *, recorder: GradNormRecorder | None = None,
                 tau: float = 0.1, power: int | None = None, total_steps: int | None = None,
                 last_epoch: int = -1) -> None:
        if (grad_norms is None) == (recorder is None):
            raise ValueError("RefinedSchedule needs exactly one of grad_norms= or recorder=")
        if recorder is not None:
            grad_norms = recorder.norms
            power = power or (2 if recorder.norm == "l2" else 1)
        power = power or (1 if is_adam_like(optimizer) else 2)
        # a tensor, so state_dict() loads with torch.load(weights_only=True)
        self.schedule = torch.as_tensor(refine(grad_norms, tau=tau, power=power, total_steps=total_steps))
        self.warned_past_end = False
        check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        if t < len(self.schedule):
            return float(self.schedule[t])
        # t = len: the scheduler stepped after the last of its steps, as a training loop does
        if t > len(self.schedule) and not self.warned_past_end:
            self.warned_past_end = True
            warnings.warn(f"RefinedSchedule: step {t} is past the schedule's {len(self.schedule)} steps; "
                          "the lr stays 0", UserWarning, stacklevel=3)
        return 0.0
