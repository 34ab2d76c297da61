"""Adaptive batch sizes (AdAdaGrad; docs/algorithms.md section 4).

Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods"
(arXiv:2402.11215); Byrd, Chin, Nocedal & Wu 2012 (norm test); Bollapragada, Byrd & Nocedal,
arXiv:1710.11258 (inner-product and orthogonality tests).

Every test maps the gradients of a batch to the next batch size, which never shrinks and is capped.
The tests take a ``(rows, d)`` tensor: per-sample gradients (``samples_per_row=1``) or the mean
gradients of equal micro-batches of ``m`` samples (``samples_per_row=m``; their covariance is
``Sigma / m``, so variances are scaled back by ``m``). With ``b`` the batch size, ``g`` the mean
gradient:

* norm:         ``b+ = ceil(tr Sigma / (eta^2 |g|^2))``
* inner product: ``b+ = ceil(Var<g_i, g> / (theta^2 |g|^4))``
* orthogonality: ``b+ = ceil(sum_j Var([g_i - (<g_i,g>/|g|^2) g]_j) / (nu^2 |g|^2))``
* augmented:    the larger of inner product and orthogonality
* coordinate (for AdaGrad): ``b+ = ceil(max_j Var(g_ij) / (eta^2 g_j^2))`` over coordinates with
  ``|g_j| > coordinate_floor * max_k |g_k|`` (a coordinate whose mean is ~0 would demand an
  unbounded batch; this guard is our documented choice, the paper leaves it open).

each then ``max(b, .)`` and ``min(max_batch_size, .)``.

``statistics="per_tensor"`` computes the inner-product and orthogonality statistics as the
authors' code does (timlautk/AdAdaGrad): within each parameter tensor ``j`` (the inner product
``<g_i^j, g^j>`` and the projection on ``g^j``), the variances summed over tensors, over
``|g|^4`` and ``|g|^2`` of the whole gradient. ``"global"`` (the default) is the formula above, over
the whole gradient; without cross-tensor covariances the per-tensor figure is smaller (about 2.2x
on an MLP). The norm and coordinate tests are the same either way.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor

from ._validation import check_choice, check_flag, check_int, check_range
from .core import sharding as _sharding
from .rules import Adagrad, AdaGradNorm

TESTS = ("norm", "inner_product", "orthogonality", "augmented", "coordinate")
STATISTICS = ("global", "per_tensor")


def _check_grads(grads: Tensor, samples_per_row: int) -> Tensor:
    if grads.dim() != 2 or grads.shape[0] < 2:
        raise ValueError("the batch tests need at least 2 per-sample (or per-micro-batch) gradients "
                         f"as a (rows, d) tensor; got shape {tuple(grads.shape)}")
    check_int("samples_per_row", samples_per_row, 1)
    return grads.detach().to(torch.float64)


def _sample_var(X: Tensor) -> Tensor:
    """Unbiased variance of each column."""
    return X.var(0, unbiased=True)


def _unreduced(x: Tensor) -> Tensor:
    return x


def statistic(test: str, grads: Tensor, samples_per_row: int = 1, *, eta: float = 0.1,
              theta: float = 0.1, nu: float = 0.1, coordinate_floor: float = 1e-3,
              sizes: list[int] | None = None, sum_shards=None, max_shards=None) -> float:
    """The batch size a test asks for (before ``max(b, .)`` and the cap), as a real number.
    ``sizes``: the numbers of entries of the parameter tensors whose gradients the columns of
    ``grads`` hold, in order; given, the inner-product and orthogonality statistics are the
    authors' per-tensor ones (see the module docstring).

    Sharded gradients (FSDP2): each rank passes the columns of its shards (``sizes`` then the
    local shards' sizes) and ``sum_shards``/``max_shards``, in-place sums and maxima of a float64
    tensor over the ranks holding the other columns; every sum over coordinates (norms, inner
    products, summed variances) is taken over the shards, so each rank gets the statistic of the
    whole gradient."""
    check_choice("test", test, TESTS)
    for name, value in (("eta", eta), ("theta", theta), ("nu", nu)):
        check_range(name, value, 0.0, low_open=True)
    check_range("coordinate_floor", coordinate_floor, 0.0, 1.0)
    total, largest = sum_shards or _unreduced, max_shards or _unreduced
    G = _check_grads(grads, samples_per_row)
    g = G.mean(0)
    m = samples_per_row
    gg = float(total(g @ g))
    if gg == 0.0:
        raise ValueError("the mean gradient is zero (|g| = 0): the batch tests are undefined there")
    if test == "norm":
        return m * float(total(_sample_var(G).sum())) / (eta ** 2 * gg)
    if test == "coordinate":
        keep = g.abs() > coordinate_floor * float(largest(g.abs().max()))
        ratio = (_sample_var(G)[keep] / g[keep] ** 2).max() if bool(keep.any()) else torch.zeros((), dtype=G.dtype)
        return m * float(largest(ratio)) / eta ** 2
    if sizes is not None and sum(sizes) != G.shape[1]:
        raise ValueError(f"Invalid sizes: they add up to {sum(sizes)}; the gradients have {G.shape[1]} columns")
    blocks = [(G, g)] if sizes is None else list(zip(G.split(sizes, 1), g.split(sizes)))
    dots = total(torch.stack([Gj @ gj for Gj, gj in blocks], 1))  # (rows, blocks): <g_i^j, g^j>
    norms = total(torch.stack([gj @ gj for _, gj in blocks]))  # |g^j|^2
    inner = m * float(_sample_var(dots).sum()) / (theta ** 2 * gg ** 2)
    if test == "inner_product":
        return inner
    spread = torch.stack([_sample_var(Gj - (dots[:, j] / norms[j])[:, None] * gj).sum() if float(norms[j]) > 0
                          else torch.zeros((), dtype=G.dtype) for j, (Gj, gj) in enumerate(blocks)]).sum()
    ortho = m * float(total(spread)) / (nu ** 2 * gg)
    return ortho if test == "orthogonality" else max(inner, ortho)


def next_batch_size(test: str, grads: Tensor, batch_size: int, max_batch_size: int,
                    samples_per_row: int = 1, **constants) -> int:
    """``min(max_batch_size, max(batch_size, ceil(statistic)))``: never shrinks, capped."""
    value = statistic(test, grads, samples_per_row, **constants)
    return int(min(max_batch_size, max(batch_size, math.ceil(value))))


class AdaptiveBatchSize:
    """Owns the current batch size and its history; ``update(grads)`` applies the test.
    ``state_dict()`` / ``load_state_dict()`` round-trip it."""

    def __init__(self, test: str = "norm", *, eta: float = 0.1, theta: float = 0.1, nu: float = 0.1,
                 initial: int = 32, max: int = 4096, coordinate_floor: float = 1e-3,
                 statistics: str = "global") -> None:
        check_choice("test", test, TESTS)
        check_choice("statistics", statistics, STATISTICS)
        self.statistics = statistics
        for name, value in (("eta", eta), ("theta", theta), ("nu", nu)):
            check_range(name, value, 0.0, low_open=True)
        for name, value in (("initial", initial), ("max", max)):
            check_int(name, value, 2)
        check_range("coordinate_floor", coordinate_floor, 0.0, 1.0)
        if max < initial:
            raise ValueError(f"Invalid max value: {max}; it must be >= initial ({initial})")
        self.test = test
        self.constants = dict(eta=eta, theta=theta, nu=nu, coordinate_floor=coordinate_floor)
        self.max = max
        self.size = initial
        self.history = [initial]

    def update(self, grads: Tensor, samples_per_row: int = 1, sizes: list[int] | None = None,
               sum_shards=None, max_shards=None) -> int:
        """Apply the test to ``grads`` (rows, d); a single row (an epoch's last batch of one
        sample) carries no variance estimate, so the size stays. ``history`` records the initial
        size and each size the test moved to (bounded: the batch only grows, up to ``max``).
        ``sum_shards``/``max_shards``: for sharded columns, see :func:`statistic`."""
        if grads.dim() == 2 and grads.shape[0] == 1:
            return self.size
        if self.statistics == "per_tensor" and sizes is None:
            raise ValueError('statistics="per_tensor" needs sizes=: the entries of each parameter tensor')
        size = next_batch_size(self.test, grads, self.size, self.max, samples_per_row, **self.constants,
                               sizes=sizes if self.statistics == "per_tensor" else None,
                               sum_shards=sum_shards, max_shards=max_shards)
        if size != self.size:
            self.history.append(size)
        self.size = size
        return self.size

    def state_dict(self) -> dict:
        return {"size": self.size, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.history = int(state["size"]), list(state["history"])


# ------------------------------------------------------------------------- gradient estimates
def per_sample_gradients(model: torch.nn.Module, loss_fn: Callable, x: Tensor, y: Tensor
                         ) -> tuple[Tensor, Tensor]:
    """``(loss, G)``: the mean loss of the batch and its per-sample gradients ``G`` (batch, d),
    with ``torch.func`` (vmap of grad over a functional call). Sets ``p.grad`` to the mean
    gradient, as ``loss.backward()`` would."""
    from torch.func import functional_call, grad, vmap
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())

    def one(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi[None],))
        return loss_fn(out, yi[None])
    per = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    G = torch.cat([per[k].reshape(len(x), -1) for k in params], 1)
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    _set_mean_grad(model, params, G.mean(0))
    return loss, G


def micro_batch_gradients(model: torch.nn.Module, loss_fn: Callable, x: Tensor, y: Tensor,
                          micro_batches: int) -> tuple[Tensor, Tensor, int]:
    """``(loss, G, m)``: the mean gradients of ``micro_batches`` equal micro-batches (the cheaper
    estimator; pass ``samples_per_row=m`` to the tests). Sets ``p.grad`` to their mean."""
    check_int("micro_batches", micro_batches, 2)
    m = len(x) // micro_batches
    if m < 1:
        raise ValueError(f"a batch of {len(x)} cannot make {micro_batches} micro-batches")
    params = [p for p in model.parameters() if p.requires_grad]
    rows, losses = [], []
    for j in range(micro_batches):
        sl = slice(j * m, (j + 1) * m)
        loss = loss_fn(model(x[sl]), y[sl])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        losses.append(loss.detach())
    G = torch.stack(rows)
    _set_mean_grad(model, dict(model.named_parameters()), G.mean(0))
    return torch.stack(losses).mean(), G, m


def local_columns(G: Tensor, params) -> Tensor:
    """The columns of ``G`` (rows, d; the whole parameters' entries in order) that hold this
    rank's shards of ``params`` (FSDP2's DTensors, sharded along dimension 0 as ``fully_shard``
    shards them), in order: what ``step(per_sample_grads=...)`` takes on each rank."""
    out, offset = [], 0
    for p in params:
        n = p.numel()
        block = G[:, offset:offset + n]
        offset += n
        if isinstance(p, _sharding.DTensor):
            local = p.to_local()
            rows = p.shape[0]
            per_row = n // rows if rows else 0
            start = _shard_start(p)
            block = block[:, start * per_row:(start + local.shape[0]) * per_row]
        out.append(block)
    return torch.cat(out, 1)


def _shard_start(p) -> int:
    """The first row of dimension 0 that this rank's shard of ``p`` holds (torch.chunk's split)."""
    from torch.distributed.tensor.placement_types import Shard
    (placement,) = p.placements
    if not isinstance(placement, Shard) or placement.dim != 0:
        raise ValueError(f"local_columns: a parameter placed as {p.placements}; fully_shard's Shard(0) is supported")
    mesh = p.device_mesh
    rank, world = mesh.get_local_rank(0), mesh.size(0)
    chunk = -(-p.shape[0] // world)
    return min(rank * chunk, p.shape[0])


def _set_mean_grad(model, params, mean: Tensor) -> None:
    offset = 0
    for name, p in model.named_parameters():
        if name not in params or not p.requires_grad:
            continue
        n = p.numel()
        p.grad = mean[offset: offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def reduce_moments(count: int, mean: Tensor, m2: Tensor, group=None) -> tuple[int, Tensor, Tensor]:
    """Combine ``(count, mean, sum of squared deviations)`` over ``torch.distributed`` ranks by the
    law of total variance: ``M2 = sum_r [M2_r + n_r |mean_r - mean|^2]`` (``m2`` per coordinate,
    or a scalar trace with the squared deviation summed over coordinates)."""
    import torch.distributed as dist
    n = torch.tensor([float(count)], dtype=torch.float64)
    dist.all_reduce(n, group=group)
    total = n.to(mean.device)
    global_mean = mean.double() * count
    dist.all_reduce(global_mean, group=group)
    global_mean /= total
    dev = (mean.double() - global_mean) ** 2 * count
    local = m2.double() + (dev if m2.dim() else dev.sum())
    dist.all_reduce(local, group=group)
    return int(n.item()), global_mean, local


# ------------------------------------------------------------------------- the data side
class AdaptiveBatchSampler(torch.utils.data.Sampler):
    """A ``batch_sampler`` for ``DataLoader`` whose batches follow ``controller.size``: each epoch
    is a permutation of ``range(n)`` (seeded by ``seed + epoch``, so runs reproduce); a batch
    takes the next ``controller.size`` indices, the last batch of an epoch what is left (or is
    dropped with ``drop_last``). ``state_dict()`` holds the epoch and the position in it, so a
    rebuilt sampler resumes mid-epoch (exact with ``num_workers=0``; workers prefetch batches, and
    so advance the sampler ahead of training)."""

    def __init__(self, n: int, controller: AdaptiveBatchSize, seed: int = 0, drop_last: bool = False) -> None:
        check_int("n", n, 1)
        if not isinstance(controller, AdaptiveBatchSize):
            raise TypeError(f"controller must be an AdaptiveBatchSize, got {type(controller).__name__}")
        check_int("seed", seed, 0)
        check_flag("drop_last", drop_last)
        self.n, self.controller, self.seed, self.drop_last = n, controller, seed, drop_last
        self.epoch = 0
        self.position = 0  # the index in this epoch's permutation where the next batch starts
        self.samples_seen = 0

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.position < self.n:
            size = self.controller.size
            batch = perm[self.position: self.position + size]
            self.position += size
            if len(batch) < size and self.drop_last:
                break
            self.samples_seen += len(batch)
            yield batch.tolist()
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.samples_seen = int(state["samples_seen"])

    def __len__(self) -> int:  # with the current size; it can only fall as the batch grows
        return self.n // self.controller.size if self.drop_last else -(-self.n // self.controller.size)


class _AdaptiveBatchMixin:
    """The optimizer owns an :class:`AdaptiveBatchSize`; ``step(per_sample_grads=G)`` takes the
    optimizer step, then lets the test grow the batch. Its state is saved by ``state_dict()``, in
    the state of the first parameter (``"batch"``), made at construction with every parameter's
    state, so distributed checkpoints carry it."""

    _pickled = ("line_search", "batch")
    _state_at_construction = True

    @property
    def _batch_state(self) -> dict:
        return self.state[self.param_groups[0]["params"][0]]

    def _init_batch(self, test, constants, initial_batch_size, max_batch_size, statistics="global"):
        check_int("initial_batch_size", initial_batch_size, 2)
        check_int("max_batch_size", max_batch_size, 2)
        if max_batch_size < initial_batch_size:
            raise ValueError(f"Invalid max_batch_size value: {max_batch_size}; it must be >= "
                             f"initial_batch_size ({initial_batch_size})")
        self.batch = AdaptiveBatchSize(test, initial=initial_batch_size, max=max_batch_size,
                                       statistics=statistics, **constants)
        self._batch_state["batch"] = self.batch.state_dict()

    def sampler(self, n: int, seed: int = 0, drop_last: bool = False) -> AdaptiveBatchSampler:
        return AdaptiveBatchSampler(n, self.batch, seed, drop_last)

    def step(self, closure=None, *, per_sample_grads: Tensor | None = None, samples_per_row: int = 1):
        """The optimizer's step, then the batch test on ``per_sample_grads`` (rows, d): per-sample
        (or per-micro-batch, ``samples_per_row=m``) gradients, one column per entry of the
        parameters with a gradient, in the groups' order. Over FSDP2 (DTensor parameters) each
        rank passes the columns of its own shards (:func:`local_columns`), and the test sums over
        the shards: every rank takes the same size."""
        if per_sample_grads is not None and (not isinstance(per_sample_grads, Tensor) or per_sample_grads.dim() != 2):
            raise ValueError("per_sample_grads must be a (rows, d) tensor of per-sample (or per-micro-batch) "
                             f"gradients; got {getattr(per_sample_grads, 'shape', type(per_sample_grads).__name__)}")
        check_int("samples_per_row", samples_per_row, 1)
        loss = super().step(closure)
        if per_sample_grads is not None:  # its columns: the parameters with a gradient, in the groups' order
            params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
            sharded = _sharding.first_dtensor(params)  # FSDP2: the columns of this rank's shards
            sizes = [p.numel() for p in _sharding.local(params)]
            self.batch.update(per_sample_grads, samples_per_row, sizes,
                              *((None, None) if sharded is None else
                                (_sharding.sum_over_shards(sharded),
                                 _sharding.sum_over_shards(sharded, torch.distributed.ReduceOp.MAX))))
        self._batch_state["batch"] = self.batch.state_dict()
        return loss

    def __setstate__(self, state):
        super().__setstate__(state)
        legacy = self.state.pop("batch", None)  # where older versions kept it
        if isinstance(legacy, dict):
            self._batch_state["batch"] = legacy
        if "batch" in self.__dict__ and isinstance(self._batch_state.get("batch"), dict):
            self.batch.load_state_dict(self._batch_state["batch"])


class AdAdaGrad(_AdaptiveBatchMixin, Adagrad):
    """AdaGrad whose batch grows by the inner-product test (default; any of ``TESTS``).

    The default is a test from the paper: the coordinate-wise test (``test="coordinate"``) takes the
    maximum over coordinates, so one coordinate whose mean gradient is small drives the batch to
    ``max_batch_size`` (an MLP on digits, ``eta=0.1``: the cap after the first step).

    ::

        opt = AdAdaGrad(model.parameters(), lr=0.1, eta=0.5, initial_batch_size=16, max_batch_size=512)
        loader = DataLoader(data, batch_sampler=opt.sampler(len(data), seed=0))
        for x, y in loader:
            loss, G = per_sample_gradients(model, loss_fn, x, y)
            opt.step(per_sample_grads=G)
    """

    def __init__(self, params, lr: float = 1e-2, *, test: str = "inner_product", eta: float = 0.1,
                 theta: float = 0.1, nu: float = 0.1, initial_batch_size: int = 32,
                 max_batch_size: int = 4096, statistics: str = "global", **adagrad_kwargs) -> None:
        super().__init__(params, lr=lr, **adagrad_kwargs)
        self._init_batch(test, dict(eta=eta, theta=theta, nu=nu), initial_batch_size, max_batch_size, statistics)


class AdAdaGradNorm(_AdaptiveBatchMixin, AdaGradNorm):
    """AdaGrad-Norm whose batch grows by the norm test (default; any of ``TESTS``); used as
    :class:`AdAdaGrad`."""

    def __init__(self, params, lr: float = 1.0, *, test: str = "norm", eta: float = 0.1,
                 theta: float = 0.1, nu: float = 0.1, initial_batch_size: int = 32,
                 max_batch_size: int = 4096, statistics: str = "global", **kwargs) -> None:
        super().__init__(params, lr=lr, **kwargs)
        self._init_batch(test, dict(eta=eta, theta=theta, nu=nu), initial_batch_size, max_batch_size, statistics)
