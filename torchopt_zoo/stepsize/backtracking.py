"""Backtracking over ``phi(alpha) = f(x + alpha d)``: the functional core and its settings.

:func:`line_search` is the whole algorithm on a one-dimensional function (property tests call it
directly); :class:`Backtracking` holds the settings an optimizer's ``line_search=`` takes, plus the
reset policy that picks each step's first trial from the previous accepted step.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

from .._validation import as_float, check_choice, check_int, check_range
from .criteria import Armijo, DescentLemma

RESETS = ("restart", "warm", "grow")


@dataclass(frozen=True)
class LineSearchResult:
    """The outcome of one search: the accepted (or, on failure, the last tried) ``alpha``, its
    ``value`` ``phi(alpha)``, the number of ``trials`` (evaluations of ``phi``), ``success`` and
    a ``reason``: ``"accepted"``, ``"max_trials"``, ``"not a descent direction"`` or
    ``"non-finite phi0"``."""

    alpha: float
    value: float
    trials: int
    success: bool
    reason: str


def _check_search(rho, eps, max_trials) -> None:
    check_range("rho", rho, 0.0, 1.0, low_open=True)
    check_range("eps", eps, 0.0, 1.0, low_open=True)
    check_int("max_trials", max_trials, 1)


def _factor(criterion, violation: float, adaptive: bool, rho: float, eps: float) -> float:
    """The factor a violated trial's step is multiplied by: ``rho`` (regular) or the criterion's
    violation-based factor in ``[eps, rho)`` (adaptive)."""
    return criterion.shrink(violation, rho, eps) if adaptive else rho


def backtrack(trial: Callable[[float], tuple[bool, float, float]], alpha0: float, criterion, *,
              adaptive: bool = True, rho: float = 0.5, eps: float = 1e-3, max_trials: int = 30,
              scale: Callable[[float, float], float] = operator.mul) -> LineSearchResult:
    """The trial loop every searched step runs: the optimizers' line search over ``alpha``, and the
    accelerated methods' estimates of ``L`` and ``M`` (``scale=operator.truediv``: a step ``1/L``
    shrinks as ``L`` grows). ``trial(alpha)`` evaluates one trial and returns
    ``(accepted, violation, value)``; a violated trial scales ``alpha`` by ``rho`` (regular) or by
    the criterion's violation-based factor (adaptive), at most ``max_trials`` trials in all."""
    alpha, value = float(alpha0), math.nan
    for count in range(1, max_trials + 1):
        accepted, violation, value = trial(alpha)
        if accepted:
            return LineSearchResult(alpha, value, count, True, "accepted")
        if count < max_trials:
            alpha = scale(alpha, _factor(criterion, violation, adaptive, rho, eps))
    return LineSearchResult(alpha, value, max_trials, False, "max_trials")


def line_search(phi: Callable[[float], float], phi0: float, slope: float, alpha0: float,
                criterion: Armijo | DescentLemma, *, direction_norm_sq: float | None = None,
                adaptive: bool = True, rho: float = 0.5, eps: float = 1e-3,
                max_trials: int = 30) -> LineSearchResult:
    r"""Backtrack from ``alpha0`` until ``criterion`` accepts ``phi(alpha)``.

    On a violated trial, regular backtracking (``adaptive=False``) takes ``alpha <- rho alpha``;
    adaptive backtracking takes ``alpha <- alpha * criterion.shrink(violation, rho, eps)``, a factor
    in ``[eps, rho)`` that grows smaller the worse the violation (Cavalcanti, Lessard & Wilson,
    "Adaptive Backtracking Line Search", arXiv:2408.13150). For convex ``phi`` the adaptive search
    never needs more trials than the regular one. ``phi`` returning NaN or inf counts as the worst
    violation. A direction with ``slope >= 0`` (or NaN) is not searched: the result says so.
    """
    _check_search(rho, eps, max_trials)
    check_range("alpha0", alpha0, 0.0, low_open=True)
    phi0, slope = float(phi0), float(slope)
    if not math.isfinite(phi0):
        return LineSearchResult(0.0, phi0, 0, False, "non-finite phi0")
    if not slope < 0:
        return LineSearchResult(0.0, phi0, 0, False, "not a descent direction")

    def trial(alpha):
        value = float(phi(alpha))
        return (*criterion.check(phi0, value, alpha, slope, direction_norm_sq), value)

    return backtrack(trial, alpha0, criterion, adaptive=adaptive, rho=rho, eps=eps, max_trials=max_trials)


class Backtracking:
    r"""Line-search settings for a zoo optimizer's ``line_search=`` argument.

    Args:
        criterion: :class:`Armijo` (default ``Armijo(1e-4)``; ``Armijo(0.1)`` suits minibatches)
            or :class:`DescentLemma`.
        adaptive: violation-based factor (``True``, the default) or constant ``rho``.
        rho: backtracking factor in (0, 1) (0.5).
        eps: floor of the adaptive factor, in (0, 1) (1e-3).
        max_trials: hard cap on evaluations per step (30); reaching it is a failure.
        alpha0: first trial of the first step, and of every step with ``reset="restart"`` (1.0).
            The optimizer's step is ``x + alpha * lr * d``: ``alpha = 1`` is its plain step.
        reset: ``"restart"`` (every step starts at ``alpha0``, the paper's choice), ``"warm"``
            (at the last accepted ``alpha``) or ``"grow"`` (at ``min(alpha_max, gamma * alpha)``).
        gamma: growth factor for ``reset="grow"`` (> 1; 2.0).
        alpha_max: cap for ``reset="grow"`` (> 0; no cap by default).
        on_failure: ``"warn"`` (a :class:`LineSearchWarning`, the step is not taken) or
            ``"raise"`` (:class:`LineSearchError`). Either way parameters and optimizer state are
            left as they were before the step, and the failure is counted. The next search
            starts from the last step tried (with ``reset="warm"`` or ``"grow"``), so a step
            grown too far recovers instead of failing again.
        fallback: what to do when the optimizer's direction is not a descent direction
            (slope >= 0): ``"gradient"`` searches along ``-lr * grad`` instead, ``"skip"`` keeps
            the parameters where they are (the direction's state update is kept, so momentum can
            turn). Either way it is counted.
    """

    def __init__(self, criterion: Armijo | DescentLemma | None = None, *, adaptive: bool = True,
                 rho: float = 0.5, eps: float = 1e-3, max_trials: int = 30, alpha0: float = 1.0,
                 reset: str = "restart", gamma: float = 2.0, alpha_max: float = math.inf,
                 on_failure: str = "warn", fallback: str = "gradient") -> None:
        criterion = Armijo() if criterion is None else criterion
        if not isinstance(criterion, (Armijo, DescentLemma)):
            raise TypeError(f"criterion must be Armijo(...) or DescentLemma(), got {criterion!r}")
        check_choice("adaptive", adaptive, (True, False))
        _check_search(rho, eps, max_trials)
        check_range("alpha0", alpha0, 0.0, low_open=True)
        check_choice("reset", reset, RESETS)
        check_range("gamma", gamma, 1.0, low_open=True)
        check_range("alpha_max", alpha_max, 0.0, math.inf, low_open=True, high_open=False)
        check_choice("on_failure", on_failure, ("warn", "raise"))
        check_choice("fallback", fallback, ("gradient", "skip"))
        self.criterion, self.adaptive, self.rho, self.eps = criterion, adaptive, float(rho), float(eps)
        self.max_trials, self.alpha0, self.reset = max_trials, as_float("alpha0", alpha0), reset
        self.gamma, self.alpha_max = float(gamma), float(alpha_max)
        self.on_failure, self.fallback = on_failure, fallback

    def initial_alpha(self, previous: float | None) -> float:
        """The first trial of a step, from the previous step's accepted ``alpha`` (None at first)."""
        if previous is None or self.reset == "restart":
            return self.alpha0
        if self.reset == "warm":
            return previous
        return min(self.alpha_max, self.gamma * previous)

    def backtrack(self, trial, alpha0, scale=operator.mul) -> LineSearchResult:
        """:func:`backtrack` with these settings."""
        return backtrack(trial, alpha0, self.criterion, adaptive=self.adaptive, rho=self.rho, eps=self.eps,
                         max_trials=self.max_trials, scale=scale)

    def search(self, phi, phi0, slope, alpha0, direction_norm_sq=None) -> LineSearchResult:
        """:func:`line_search` with these settings."""
        return line_search(phi, phi0, slope, alpha0, self.criterion,
                           direction_norm_sq=direction_norm_sq, adaptive=self.adaptive,
                           rho=self.rho, eps=self.eps, max_trials=self.max_trials)

    def __repr__(self) -> str:
        return (f"Backtracking({self.criterion!r}, adaptive={self.adaptive}, rho={self.rho}, "
                f"eps={self.eps}, max_trials={self.max_trials}, alpha0={self.alpha0}, "
                f"reset={self.reset!r}, gamma={self.gamma}, alpha_max={self.alpha_max}, "
                f"on_failure={self.on_failure!r}, fallback={self.fallback!r})")
