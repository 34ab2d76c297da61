"""Sufficient-decrease criteria for a step ``x + alpha d`` (docs/algorithms.md section 1).

A criterion looks at the one-dimensional restriction ``phi(alpha) = f(x + alpha d)`` through four
numbers: ``phi0 = phi(0)``, the trial value ``phi(alpha)``, the slope ``s = <grad f(x), d> < 0`` and
(for the descent lemma) ``|d|^2``. It says whether the trial is accepted and, when it is not, by
how much it is violated; adaptive backtracking (Cavalcanti, Lessard & Wilson, arXiv:2408.13150)
turns that violation into the next step's factor at no extra cost. A non-finite trial value is the
worst violation there is.
"""

from __future__ import annotations

import math

from .._validation import check_range


class Armijo:
    r"""Armijo's sufficient decrease: ``phi(alpha) <= phi0 + c alpha s``.

    Violation is measured by the ratio of actual to predicted decrease
    ``r = (phi(alpha) - phi0) / (alpha s)`` (holds iff ``r >= c``); adaptive backtracking shrinks
    by ``max(eps, rho (1 - c) / (1 - r))``, which for a quadratic along ``d`` lands on ``rho`` times
    the Armijo boundary.
    """

    needs_direction_norm = False

    def __init__(self, c: float = 1e-4) -> None:
        check_range("c", c, 0.0, 1.0, low_open=True)
        self.c = float(c)

    def check(self, phi0: float, value: float, alpha: float, slope: float,
              direction_norm_sq: float | None = None) -> tuple[bool, float]:
        """``(accepted, r)``; ``r = -inf`` for a non-finite trial value."""
        if not math.isfinite(value):
            return False, -math.inf
        return value <= phi0 + self.c * alpha * slope, (value - phi0) / (alpha * slope)

    def shrink(self, ratio: float, rho: float, eps: float) -> float:
        """Adaptive factor for a violated trial (``ratio < c``), in ``[eps, rho)``."""
        return max(eps, rho * (1.0 - self.c) / (1.0 - ratio))

    def __repr__(self) -> str:
        return f"Armijo(c={self.c})"


class DescentLemma:
    r"""The descent lemma with ``L = 1/alpha``:
    ``D = phi(alpha) - phi0 - alpha s <= (alpha / 2) |d|^2``.

    For ``d = -grad f(y)`` this is the test that accepts ``L`` as a smoothness estimate for the
    gradient step ``y - grad f(y) / L`` (it equals Armijo with ``c = 1/2``). Violation
    ``v = D / ((alpha/2) |d|^2)`` (holds iff ``v <= 1``); adaptive backtracking shrinks ``alpha``
    by ``max(eps, rho / v)``, i.e. ``L <- L min(1/eps, v / rho)``: the measured local curvature
    divided by ``rho``.
    """

    needs_direction_norm = True

    def check(self, phi0: float, value: float, alpha: float, slope: float,
              direction_norm_sq: float | None = None) -> tuple[bool, float]:
        """``(accepted, v)``; ``v = inf`` for a non-finite trial value."""
        if direction_norm_sq is None or not direction_norm_sq > 0:
            raise ValueError("DescentLemma needs direction_norm_sq = |d|^2 > 0, "
                             f"got {direction_norm_sq!r}")
        if not math.isfinite(value):
            return False, math.inf
        bound = 0.5 * alpha * direction_norm_sq
        excess = value - phi0 - alpha * slope
        return excess <= bound, excess / bound

    def shrink(self, ratio: float, rho: float, eps: float) -> float:
        """Adaptive factor for a violated trial (``ratio > 1``), in ``[eps, rho)``."""
        return max(eps, rho / ratio)

    def __repr__(self) -> str:
        return "DescentLemma()"
