"""Contractive compressors (docs/algorithms.md section 5): ``E|C(x) - x|^2 <= (1 - alpha) |x|^2``.

A compressor maps a flat tensor to a tensor of the same shape that keeps only what a message
would carry. Each one states its ``alpha(d)`` and the ``bits(d)`` of one message for a vector of
``d`` entries, so that benchmarks can count what is sent. Write your own by subclassing
:class:`Compressor` (``compress``, ``alpha``, ``bits``; ``contractive = False`` if it is not).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_choice, check_flag, check_int, check_range


class Compressor:
    """Interface: ``compress(x)`` (flat tensor -> same shape), ``alpha(d)``, ``bits(d)``."""

    contractive = True

    def __init__(self, value_bits: int = 32) -> None:
        check_choice("value_bits", value_bits, (16, 32, 64))
        self.value_bits = value_bits

    def compress(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def compress_rows(self, X: Tensor) -> Tensor:
        """``compress`` applied to each row of a 2-D tensor (one row per worker)."""
        return torch.stack([self.compress(row) for row in X])

    def alpha(self, d: int) -> float:
        raise NotImplementedError

    def bits(self, d: int) -> int:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.compress(x)


class Identity(Compressor):
    """No compression: ``alpha = 1``, ``d`` values per message."""

    def compress(self, x):
        return x.clone()

    def compress_rows(self, X):
        return X.clone()

    def alpha(self, d):
        return 1.0

    def bits(self, d):
        return d * self.value_bits


class _Sparsifier(Compressor):
    def __init__(self, k: int | None = None, ratio: float | None = None, value_bits: int = 32) -> None:
        super().__init__(value_bits)
        if (k is None) == (ratio is None):
            raise ValueError(f"{type(self).__name__} takes exactly one of k= or ratio=")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
            raise ValueError(f"Invalid k: {k!r}; allowed range is integers in [1, d]")
        if ratio is not None:
            check_range("ratio", ratio, 0.0, 1.0, low_open=True, high_open=False)
        self.k_fixed, self.ratio = k, ratio

    def k(self, d: int) -> int:
        if self.k_fixed is not None:
            if self.k_fixed > d:
                raise ValueError(f"Invalid k: {self.k_fixed}; allowed range is integers in [1, d] "
                                 f"and the vector has d = {d} entries")
            return self.k_fixed
        return max(1, math.ceil(self.ratio * d))

    def alpha(self, d):
        return self.k(d) / d

    def k_at_most(self, d: int) -> int:
        """``k`` for a vector of ``d`` entries where a fixed ``k`` may exceed ``d`` (then all ``d``):
        the DDP hooks compress each parameter on its own."""
        return min(self.k_fixed, d) if self.k_fixed is not None else self.k(d)


class TopK(_Sparsifier):
    """Keep the ``k`` entries of largest magnitude (``alpha = k/d``, biased). A message is ``k``
    values and ``k`` indices of ``ceil(log2 d)`` bits."""

    def compress(self, x):
        flat = x.reshape(-1)
        idx = flat.abs().topk(self.k(flat.numel()), sorted=False).indices
        out = torch.zeros_like(flat)
        out[idx] = flat[idx]
        return out.view_as(x)

    def compress_rows(self, X):
        idx = X.abs().topk(self.k(X.shape[1]), dim=1, sorted=False).indices
        return torch.zeros_like(X).scatter_(1, idx, X.gather(1, idx))

    def bits(self, d):
        return self.k(d) * (self.value_bits + max(1, math.ceil(math.log2(d))))


class RandK(_Sparsifier):
    """Keep ``k`` entries chosen uniformly at random. Unscaled it is contractive with
    ``alpha = k/d`` in expectation; ``scaled=True`` multiplies by ``d/k`` (unbiased, *not*
    contractive for ``k < d/2``). With a seed shared by all workers the indices need not be
    sent: a message is ``k`` values."""

    def __init__(self, k: int | None = None, ratio: float | None = None, *, scaled: bool = False,
                 seed: int = 0, value_bits: int = 32) -> None:
        super().__init__(k, ratio, value_bits)
        check_flag("scaled", scaled)
        check_int("seed", seed, 0)
        self.scaled = scaled
        self.contractive = not self.scaled
        self.seed, self.calls = int(seed), 0  # (seed, calls) fixes every draw; both pickle

    def indices(self, d: int) -> Tensor:
        """The next ``k`` random coordinates; compressors built with one seed draw the same ones."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        return torch.randperm(d, generator=gen)[: self.k(d)]

    def compress(self, x):
        flat = x.reshape(-1)
        d = flat.numel()
        idx = self.indices(d).to(flat.device)
        out = torch.zeros_like(flat)
        out[idx] = flat[idx] * (d / self.k(d) if self.scaled else 1.0)
        return out.view_as(x)

    def bits(self, d):
        return self.k(d) * self.value_bits


def require_contractive(compressor: Compressor, where: str) -> None:
    if not isinstance(compressor, Compressor):
        raise TypeError(f"{where} needs a torchopt_zoo.compression.Compressor, got {type(compressor).__name__}")
    if not compressor.contractive:
        raise ValueError(f"{where} needs a contractive compressor; {type(compressor).__name__}"
                         "(scaled=True) is unbiased but not contractive for k < d/2")
