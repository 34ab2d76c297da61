"""Error-feedback methods over ``n`` simulated workers (deterministic; for research and tests).

Each ``step(worker_grads)`` takes one gradient list per worker (the gradients of ``f_i`` at the
current parameters, shaped like the parameters), updates the workers' compressed state and moves
the parameters; ``f = (1/n) sum_i f_i``. The compressor acts on each worker's whole flattened
vector. ``bits_last`` / ``bits_total`` count what the workers send (``Compressor.bits``, summed
over workers). The learning rate is ``param_groups[0]["lr"]`` (schedulers work), and all state
is in ``state_dict()``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .._pickling import PicklesAttributes
from .._validation import check_choice, check_flag, check_int, check_range
from .compressors import Compressor, require_contractive


def ef21_step_size(L: float, L_workers: Sequence[float], alpha: float, weighted: bool = False) -> float:
    r"""EF21's theory step ``1 / (L + L~ sqrt(beta / theta))`` with ``theta = 1 - sqrt(1 - alpha)``,
    ``beta = (1 - alpha) / (1 - sqrt(1 - alpha))`` and ``L~`` the quadratic mean of the workers'
    ``L_i`` (Richtarik, Sokolov & Fatkhullin, arXiv:2106.05203) or, ``weighted=True`` (EF21-W,
    arXiv:2402.10774), their arithmetic mean."""
    check_range("L", L, 0.0, low_open=True)
    check_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=False)
    Ls = [float(v) for v in L_workers]
    if not Ls or min(Ls) < 0:
        raise ValueError("Invalid L_workers: need one smoothness constant >= 0 per worker")
    if alpha == 1.0:
        return 1.0 / L
    root = math.sqrt(1 - alpha)
    theta, beta = 1 - root, (1 - alpha) / (1 - root)
    mean = sum(Ls) / len(Ls) if weighted else math.sqrt(sum(v * v for v in Ls) / len(Ls))
    return 1.0 / (L + mean * math.sqrt(beta / theta))


class _Simulated(PicklesAttributes, torch.optim.Optimizer):
    """Shared plumbing: flattening, worker-count checks, bit counting, one param group."""

    _pickled = ("n_workers", "compressor", "weights", "init", "eta")

    def __init__(self, params, n_workers: int, compressor: Compressor, lr: float,
                 contractive: bool = True) -> None:
        check_int("n_workers", n_workers, 1)
        check_range("lr", lr, 0.0)
        check_flag("contractive", contractive)
        if contractive:
            require_contractive(compressor, type(self).__name__)
        self.n_workers, self.compressor = n_workers, compressor
        super().__init__(params, dict(lr=lr))
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group")

    @property
    def _params(self):
        return self.param_groups[0]["params"]

    @property
    def ef_state(self) -> dict:
        return self.state.setdefault("ef", {"t": 0, "bits_last": 0, "bits_total": 0})

    def _stack(self, worker_grads) -> Tensor:
        """``(n_workers, d)`` from one gradient list per worker (or such a tensor already)."""
        if isinstance(worker_grads, Tensor) and worker_grads.dim() == 2:
            d = sum(p.numel() for p in self._params)
            if worker_grads.shape != (self.n_workers, d):
                raise ValueError(f"{type(self).__name__} has n_workers = {self.n_workers} and "
                                 f"d = {d}; got worker gradients of shape {tuple(worker_grads.shape)}")
            return worker_grads.detach()
        if len(worker_grads) != self.n_workers:
            raise ValueError(f"{type(self).__name__} has n_workers = {self.n_workers} but got "
                             f"gradients from {len(worker_grads)} workers")
        rows = []
        for grads in worker_grads:
            grads = [grads] if isinstance(grads, Tensor) else list(grads)
            if len(grads) != len(self._params):
                raise ValueError(f"each worker must give {len(self._params)} gradient tensors, got {len(grads)}")
            rows.append(torch.cat([g.detach().reshape(-1) for g in grads]))
        return torch.stack(rows)

    def _compress_rows(self, X: Tensor) -> Tensor:
        return self.compressor.compress_rows(X)

    def _full_bits(self, d: int) -> int:
        return self.n_workers * d * self.compressor.value_bits

    def _sparse_bits(self, d: int) -> int:
        return self.n_workers * self.compressor.bits(d)

    @torch.no_grad()
    def step(self, worker_grads):
        """One step from the workers' gradients at the current parameters."""
        G = self._stack(worker_grads)
        s = self.ef_state
        move, bits = self._update(G, s, s["t"] == 0, self.param_groups[0]["lr"])
        offset = 0
        for p in self._params:
            n = p.numel()
            p.sub_(move[offset: offset + n].view_as(p).to(p.dtype))
            offset += n
        s["t"] += 1
        s["bits_last"] = bits
        s["bits_total"] += bits
        return move

    def _update(self, G, s, first, lr):
        raise NotImplementedError


class CompressedGD(_Simulated):
    """Compressed gradient descent without error feedback: ``x -= lr mean_i C(g_i)`` (the
    baseline that stalls with a biased compressor)."""

    def __init__(self, params, n_workers, compressor, lr):
        super().__init__(params, n_workers, compressor, lr, contractive=False)

    def _update(self, G, s, first, lr):
        return lr * self._compress_rows(G).mean(0), self._sparse_bits(G.shape[1])


class EF14(_Simulated):
    """Error feedback (Seide et al. 2014; Stich et al., arXiv:1809.07599):
    ``p_i = e_i + lr g_i``, ``Delta_i = C(p_i)``, ``e_i = p_i - Delta_i``, ``x -= mean_i Delta_i``.
    The virtual iterate ``x - mean_i e_i`` follows plain gradient descent."""

    def _update(self, G, s, first, lr):
        if first:
            s["e"] = torch.zeros_like(G)
        p = s["e"] + lr * G
        delta = self._compress_rows(p)
        s["e"] = p - delta
        return delta.mean(0), self._sparse_bits(G.shape[1])


class EF21(_Simulated):
    """EF21 (Richtarik, Sokolov & Fatkhullin, arXiv:2106.05203): each worker keeps ``g_i``
    (``init="full"``: its first gradient, sent uncompressed; ``"compressed"``: ``C`` of it),
    sends ``c_i = C(grad f_i - g_i)`` and sets ``g_i += c_i``; ``x -= lr sum_i w_i g_i``.

    ``weights`` (e.g. the workers' ``L_i``) gives EF21-W (arXiv:2402.10774): ``w_i = L_i / sum L``,
    each worker compresses ``grad f_i / (n w_i)``; for positively homogeneous compressors (Top-K,
    Rand-K) this is EF21 itself and the gain is the larger step of
    ``ef21_step_size(..., weighted=True)``."""

    def __init__(self, params, n_workers, compressor, lr, *, weights: Sequence[float] | None = None,
                 init: str = "full"):
        check_choice("init", init, ("full", "compressed"))
        super().__init__(params, n_workers, compressor, lr)
        if weights is not None:
            w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
            if w.numel() != n_workers or bool((w <= 0).any()):
                raise ValueError(f"Invalid weights: need {n_workers} positive numbers")
            self.weights = w / w.sum()
        else:
            self.weights = None
        self.init = init

    def _update(self, G, s, first, lr):
        d = G.shape[1]
        if self.weights is not None:
            w = self.weights.to(G)
            G = G / (self.n_workers * w[:, None])
        if first:
            s["g"] = G.clone() if self.init == "full" else self._compress_rows(G)
            bits = self._full_bits(d) if self.init == "full" else self._sparse_bits(d)
        else:
            s["g"] += self._compress_rows(G - s["g"])
            bits = self._sparse_bits(d)
        g = s["g"].mean(0) if self.weights is None else (self.weights.to(G)[:, None] * s["g"]).sum(0)
        return lr * g, bits


class EF21SGDM(_Simulated):
    """EF21 with momentum (Fatkhullin et al., arXiv:2305.15155): ``v_i = (1 - eta) v_i + eta g_i``,
    ``g_i += C(v_i - g_i)``, ``x -= lr mean_i g_i`` (first step: ``v_i = g_i`` = the gradient,
    sent uncompressed)."""

    def __init__(self, params, n_workers, compressor, lr, *, eta: float = 0.1):
        check_range("eta", eta, 0.0, 1.0, low_open=True, high_open=False)
        super().__init__(params, n_workers, compressor, lr)
        self.eta = float(eta)

    def _update(self, G, s, first, lr):
        d = G.shape[1]
        if first:
            s["v"], s["g"] = G.clone(), G.clone()
            bits = self._full_bits(d)
        else:
            s["v"].mul_(1 - self.eta).add_(G, alpha=self.eta)
            s["g"] += self._compress_rows(s["v"] - s["g"])
            bits = self._sparse_bits(d)
        return lr * s["g"].mean(0), bits


class EControl(_Simulated):
    """EControl (Gao, Islamov & Stich, arXiv:2311.05645): per worker an error ``e_i`` (0) and an
    estimator ``h_i`` (``init="full"``: the first gradient; ``"compressed"``: ``C`` of it);
    ``Delta_i = C(eta e_i + g_i - h_i)``, ``e_i += g_i - h_i - Delta_i``, ``h_i += Delta_i``,
    ``x -= lr mean_i h_i``. Only ``Delta_i`` is sent. ``eta = 0`` with ``init="compressed"`` is
    EF21 with ``init="compressed"``; nothing is lost: ``e_i + h_i`` after a step equals ``e_i``
    before it plus the new gradient."""

    def __init__(self, params, n_workers, compressor, lr, *, eta: float = 0.1, init: str = "full"):
        check_range("eta", eta, 0.0)
        check_choice("init", init, ("full", "compressed"))
        super().__init__(params, n_workers, compressor, lr)
        self.eta, self.init = float(eta), init

    def _update(self, G, s, first, lr):
        d = G.shape[1]
        if first:
            s["e"] = torch.zeros_like(G)
            s["h"] = G.clone() if self.init == "full" else self._compress_rows(G)
            bits = self._full_bits(d) if self.init == "full" else self._sparse_bits(d)
        else:
            delta = self._compress_rows(self.eta * s["e"] + G - s["h"])
            s["e"] += G - s["h"] - delta
            s["h"] += delta
            bits = self._sparse_bits(d)
        return lr * s["h"].mean(0), bits
