"""Accelerated methods from the Bregman Lagrangian (docs/algorithms.md, "Accelerated methods")."""

from .methods import BregmanAccelerated, HigherOrderAccelerated

__all__ = ["BregmanAccelerated", "HigherOrderAccelerated"]
