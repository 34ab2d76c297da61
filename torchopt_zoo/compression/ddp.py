"""Error feedback as ``torch.distributed`` DDP communication hooks (gloo on CPU, NCCL on GPU).

    state = EFHookState(TopK(ratio=0.01))
    state.register(ddp, ef21_hook)               # or econtrol_hook / ef14_hook

The hook replaces DDP's all-reduce of each gradient bucket: the bucket receives the method's
aggregate (EF21: ``g = mean_i g_i``; EControl: ``h = mean_i h_i``; EF14: ``mean_i Delta_i``), and
any torch optimizer steps with it. For the first ``start_iter`` steps (at least 2, while DDP
rebuilds its buckets) the hook is a plain all-reduce that (re)initialises the workers' state with
uncompressed gradients. The state is kept per *parameter name*, so it does not depend on how DDP
lays parameters out in buckets (which changes when DDP rebuilds them, or in a new DDP instance);
a parameter whose size changes is re-initialised the same way. The compressor acts on each
parameter's part of a bucket on its own (``TopK(k=...)`` keeps ``min(k, numel)`` entries of each
parameter, ``ratio=`` that share of each), so what is sent does not depend on the bucket layout
either: a job restarted from a checkpoint, whose new DDP instance starts with other buckets, takes
the same steps as the uninterrupted one. Top-K messages go out as (values, int32 indices) by
all-gather; Rand-K draws each parameter's coordinates from its seed, the step count and the
parameter's name (the same on every rank) and sends only the values, by all-gather. Both add the
ranks' messages in rank order, so the sums do not depend on the layout either (an all-reduce's
order of addition does, with 3 or more ranks). Any other compressor sends its dense output by
one all-reduce per parameter, whose order of addition depends only on the parameter's size.

The hooks work in place: each bucket layout's vectors live in one flat buffer per vector (the
per-name entries are views of it), so a step makes no copy of the state; a sparse message updates
the state at its ``k`` entries only, and the aggregate is written into DDP's bucket buffer. The
simulated methods (:mod:`.simulated`) are the reference they are tested against.

Checkpoint it on every rank with the model and optimizer: ``state.state_dict()`` holds only tensors
and plain values (``torch.load`` reads it with ``weights_only=True``) and records the rank and
world size it belongs to, since each rank's vectors are its own (EF21's ``g = mean_i g_i`` holds
only with every rank's own ``g_i``); ``state.load_state_dict(sd)`` on the same rank of a group of
the same size, then ``state.register(new_ddp, hook)``. ``EFHookState`` also pickles (without its
process group and parameter map, as torch's ``PowerSGDState``).
"""

import zlib
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import check_choice, check_int, check_range
from .compressors import Compressor, RandK, TopK, require_contractive

METHODS = ("ef21", "econtrol", "ef14")


class EFHookState:
    """Per-rank state of an error-feedback hook: the method's vectors for each parameter name, the
    step count, and ``bytes_last`` / ``bytes_total`` sent by this rank."""

    def __init__(self, compressor: Compressor, method: str = "ef21", *, eta: float = 0.1,
                 start_iter: int = 2, process_group=None) -> None:
        require_contractive(compressor, "EFHookState")
        check_choice("method", method, METHODS)
        check_range("eta", eta, 0.0)
        check_int("start_iter", start_iter, 2, " (DDP rebuilds its buckets after the first iteration)")
        self.compressor, self.method, self.eta, self.start_iter = compressor, method, float(eta), start_iter
        self.process_group = process_group
        self.iter = 0
        self.vectors: dict[str, dict[str, Tensor]] = {}  # parameter name -> the method's vectors
        self.names: dict[int, str] = {}
        self._flat: dict[tuple[str, ...], dict[str, Tensor]] = {}  # bucket layout -> buffers behind the vectors
        self.bytes_last = self.bytes_total = 0
        self._bytes_step = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("process_group", "names", "_flat"):
            state.pop(key)
        # views of the flat buffers would each pickle their whole buffer
        state["vectors"] = _copy(self.vectors)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.process_group, self.names, self._flat = None, {}, {}

    # -------------------------------------------------------------- checkpoints
    _SAVED = ("method", "eta", "start_iter", "iter", "bytes_last", "bytes_total")

    def _rank_and_world(self) -> tuple[int, int] | None:
        if not dist.is_available() or not dist.is_initialized():
            return None
        return dist.get_rank(self._group()), dist.get_world_size(self._group())

    def state_dict(self) -> dict:
        """This rank's state: the method's vectors per parameter name (copies), the counters (Rand-K's
        draws follow the step count), and the rank and world size it belongs to; tensors and plain
        values only."""
        where = self._rank_and_world()
        if where is None:
            raise RuntimeError("EFHookState.state_dict() needs the process group initialised: it records "
                               "the rank the state belongs to")
        out = {key: getattr(self, key) for key in self._SAVED}
        out["rank"], out["world_size"] = where
        out["vectors"] = _copy(self.vectors)
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`'s output, saved on this rank of a group of this size (a
        ValueError otherwise, before anything changes); then :meth:`register` the DDP model."""
        where = self._rank_and_world()
        if where is None:
            raise RuntimeError("EFHookState.load_state_dict() needs the process group initialised: it "
                               "checks the rank the state belongs to")
        rank, world = where
        if state_dict["world_size"] != world:
            raise ValueError(f"this EFHookState was saved in a group of {state_dict['world_size']} ranks; "
                             f"this group has {world}: error feedback cannot be re-sharded across ranks")
        if state_dict["rank"] != rank:
            raise ValueError(f"this EFHookState was saved by rank {state_dict['rank']}; this is rank {rank}: "
                             "each rank must load its own state (its vectors are its own)")
        if state_dict["method"] != self.method:
            raise ValueError(f"this EFHookState was saved with method={state_dict['method']!r}; "
                             f"this one has method={self.method!r}")
        for key in self._SAVED:
            setattr(self, key, state_dict[key])
        self.vectors = _copy(state_dict["vectors"])
        self._flat = {}

    def register(self, ddp_model, hook) -> None:
        """Map the parameters of ``ddp_model`` to their names and register ``hook`` with this state."""
        self.names = {id(p): name for name, p in ddp_model.module.named_parameters()}
        ddp_model.register_comm_hook(self, hook)

    # -------------------------------------------------------------- state layout
    def _lay_out(self, names: tuple[str, ...], sizes: list[int], flat: dict[str, Tensor]) -> dict[str, Tensor]:
        """Make ``flat`` the buffers of bucket layout ``names``: the vectors of those names become
        views of them; layouts sharing a name are dropped (their other names keep their views)."""
        for other in [k for k in self._flat if not set(k).isdisjoint(names)]:
            del self._flat[other]
        for key, buffer in flat.items():
            for n, view in zip(names, buffer.split(sizes)):
                self.vectors.setdefault(n, {})[key] = view
        self._flat[names] = flat
        return flat

    def buffers(self, names: tuple[str, ...], sizes: list[int]) -> dict[str, Tensor]:
        """The flat buffers of a bucket's vectors, laid out (one copy) when the layout is new: the
        first compressed step, after DDP rebuilt its buckets, or after unpickling."""
        flat = self._flat.get(names)
        if flat is None:
            keys = self.vectors[names[0]].keys()
            flat = self._lay_out(names, sizes, {k: torch.cat([self.vectors[n][k] for n in names]) for k in keys})
        return flat

    # -------------------------------------------------------------- collectives
    def _group(self):
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def _count(self, *tensors: Tensor) -> None:
        self._bytes_step += sum(t.numel() * t.element_size() for t in tensors)

    def all_reduce_mean(self, x: Tensor) -> Tensor:
        out = x / dist.get_world_size(self._group())
        self._count(out)
        dist.all_reduce(out, group=self._group())
        return out

    def add_mean_of_compressed(self, target: Tensor, values: Tensor, indices: Optional[Tensor],
                               sizes: list[int]) -> None:
        """``target += mean_r C_r`` over ranks ``r`` of every rank's compressed vector (``values``
        at ``indices``, or dense where ``indices`` is None), sent the cheapest way. A dense vector
        is all-reduced parameter by parameter (``sizes``): an all-reduce's order of addition
        depends on the length of what it reduces, which is then the parameter's, whatever the
        bucket layout."""
        world = dist.get_world_size(self._group())
        if indices is None:  # dense (unknown compressor)
            for part, mean in zip(target.split(sizes), values.split(sizes)):
                part.add_(self.all_reduce_mean(mean))
            return
        all_values = [torch.empty_like(values) for _ in range(world)]
        dist.all_gather(all_values, values, group=self._group())
        if isinstance(self.compressor, RandK):  # the same indices on every rank: only the values go
            self._count(values)
            all_idx = [indices] * world
        else:
            idx32 = indices.to(torch.int32)
            self._count(values, idx32)
            all_idx = [torch.empty_like(idx32) for _ in range(world)]
            dist.all_gather(all_idx, idx32, group=self._group())
        for v, i in zip(all_values, all_idx):  # rank by rank: the same sums whatever the bucket layout
            target.index_add_(0, i.long(), v, alpha=1 / world)

    def compress(self, x: Tensor, names: tuple[str, ...], sizes: list[int]) -> tuple[Tensor, Optional[Tensor]]:
        """``C`` of each parameter's part of a bucket's flat vector, as ``(values, indices)`` into
        the bucket (a sparsifier) or ``(C(x), None)`` (any other compressor, dense). Rand-K draws a
        parameter's coordinates from its seed, this step's count and the parameter's name: the
        same on every rank, in every bucket layout."""
        parts = x.split(sizes)
        if not isinstance(self.compressor, (TopK, RandK)):
            return torch.cat([self.compressor.compress(part) for part in parts]), None
        indices, start = [], 0
        for name, part in zip(names, parts):
            n = part.numel()
            k = self.compressor.k_at_most(n)
            if isinstance(self.compressor, TopK):
                idx = part.abs().topk(k, sorted=False).indices
            else:
                key = (self.compressor.seed * 1_000_003 + self.iter) * 1_000_003 + zlib.crc32(name.encode())
                gen = torch.Generator().manual_seed(key % 2**63)
                idx = torch.randperm(n, generator=gen)[:k].to(x.device)
            indices.append(idx + start)
            start += n
        idx = torch.cat(indices)
        return x[idx], idx

    def end_step(self) -> None:
        self.iter += 1
        self.bytes_last, self._bytes_step = self._bytes_step, 0
        self.bytes_total += self.bytes_last

    # -------------------------------------------------------------- the methods
    def aggregate(self, grad: Tensor, params: list[Tensor]) -> Tensor:
        """One bucket's step of the method: ``grad`` is this rank's flat gradient of ``params``;
        returns the aggregate DDP hands to the optimizer, written into ``grad``."""
        if not self.names:
            raise RuntimeError("register error-feedback hooks with state.register(ddp_model, hook), "
                               "which maps the parameters to their names")
        names = tuple(self.names[id(p)] for p in params)
        sizes = [p.numel() for p in params]
        fresh = self.iter < self.start_iter or any(
            n not in self.vectors or next(iter(self.vectors[n].values())).numel() != k
            for n, k in zip(names, sizes))
        if fresh:  # plain all-reduce; (re)start from full gradients
            mean = self.all_reduce_mean(grad)
            start = {"ef21": lambda: {"g_i": grad.clone(), "g": mean},
                     "econtrol": lambda: {"e": torch.zeros_like(grad), "h_i": grad.clone(), "h": mean},
                     "ef14": lambda: {"e": torch.zeros_like(grad)}}[self.method]
            self._lay_out(names, sizes, start())
            return grad.copy_(mean)
        s = self.buffers(names, sizes)
        if self.method == "ef21":  # c = C(grad - g_i); g_i += c; g += mean_r c_r
            values, idx = self.compress(grad - s["g_i"], names, sizes)
            _add(s["g_i"], values, idx)
            self.add_mean_of_compressed(s["g"], values, idx, sizes)
            return grad.copy_(s["g"])
        if self.method == "econtrol":  # x = eta e + grad - h_i; delta = C(x); e += grad - h_i - delta; h_i += delta
            x = (grad - s["h_i"]).add_(s["e"], alpha=self.eta)
            values, idx = self.compress(x, names, sizes)
            s["e"].mul_(1 - self.eta).add_(x)  # e + grad - h_i = (1 - eta) e + x
            _add(s["e"], values, idx, alpha=-1.0)
            _add(s["h_i"], values, idx)
            self.add_mean_of_compressed(s["h"], values, idx, sizes)
            return grad.copy_(s["h"])
        e = s["e"].add_(grad)  # ef14: p = e + grad; delta = C(p); e = p - delta; the bucket gets mean_r delta_r
        values, idx = self.compress(e, names, sizes)
        _add(e, values, idx, alpha=-1.0)
        self.add_mean_of_compressed(grad.zero_(), values, idx, sizes)
        return grad


def _copy(vectors: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """The method's vectors per parameter name, each its own tensor (not a view of a flat buffer,
    which would save or pickle the whole buffer)."""
    return {n: {k: v.clone() for k, v in vs.items()} for n, vs in vectors.items()}


def _add(target: Tensor, values: Tensor, indices: Optional[Tensor], alpha: float = 1.0) -> None:
    """``target += alpha C`` for a compressed vector (``values`` at ``indices``, or dense)."""
    if indices is None:
        target.add_(values, alpha=alpha)
    else:
        target.index_add_(0, indices, values, alpha=alpha)


def _done(value: Tensor) -> torch.futures.Future[torch.Tensor]:
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(value)
    return fut


def _error_feedback_hook(state: EFHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    result = state.aggregate(bucket.buffer(), bucket.parameters())
    if bucket.is_last():
        state.end_step()
    return _done(result)


def _check_method(state: EFHookState, method: str) -> None:
    if state.method != method:
        raise ValueError(f'{method}_hook needs EFHookState(method="{method}"), got {state.method!r}')


def ef21_hook(state: "EFHookState", bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """EF21 (arXiv:2106.05203) over DDP: the bucket gets ``g = mean_i g_i``, ``g_i += C(grad_i - g_i)``."""
    _check_method(state, "ef21")
    return _error_feedback_hook(state, bucket)


def econtrol_hook(state: "EFHookState", bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """EControl (arXiv:2311.05645) over DDP: the bucket gets ``h = mean_i h_i``."""
    _check_method(state, "econtrol")
    return _error_feedback_hook(state, bucket)


def ef14_hook(state: "EFHookState", bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """EF14 (Seide et al. 2014) over DDP: the bucket gets ``mean_i C(e_i + grad_i)``."""
    _check_method(state, "ef14")
    return _error_feedback_hook(state, bucket)
