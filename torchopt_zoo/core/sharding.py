"""DTensor parameters (FSDP2's ``fully_shard``): the step runs on each rank's local shards.

Every elementwise rule is the same math on a shard as on the whole tensor, so a group whose
parameters are DTensors takes its step on their local tensors (views of the same storage: the
update lands in the DTensors), in any tier, with the state kept as DTensors shaped and placed like
the parameters (what ``torch.distributed.checkpoint`` saves and re-shards). A rule whose state spans
the group (AdaGradNorm's ``sum_i |g_i|^2``) sums its local statistic over the shards with
:func:`sum_over_shards`.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.4
    from torch.distributed._tensor import DTensor

SUM_OVER_SHARDS = "sum_over_shards"  # the key a group-wide rule finds its reduction under


def first_dtensor(tensors: list[Tensor]) -> DTensor | None:
    return next((t for t in tensors if isinstance(t, DTensor)), None)


def local(tensors: list[Tensor]) -> list[Tensor]:
    """Each DTensor's local shard (a view: in-place updates land in the DTensor); others as they are."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def local_states(states: list[dict]) -> list[dict]:
    """The states with their DTensors as local shards (new dicts over the same tensors: the rules
    update state in place)."""
    return [{k: v.to_local() if isinstance(v, DTensor) else v for k, v in s.items()} for s in states]


def localized(params: list[Tensor], grads: list[Tensor], states: list[dict]):
    """``(params, grads, states)`` of a step, each DTensor as its local shard."""
    return local(params), local(grads), local_states(states)


def splits_last_dim(tensors: list[Tensor]) -> bool:
    """Whether a DTensor among ``tensors`` is sharded along its last dimension (a 1-D parameter
    under ``fully_shard``): a shard then holds parts of rows, not whole ones."""
    return any(isinstance(t, DTensor) and any(p.is_shard() and p.dim % t.dim() == t.dim() - 1 for p in t.placements)
               for t in tensors)


def reducer(tensors: list[Tensor]):
    """:func:`sum_over_shards` for the DTensors among ``tensors``, or None where there are none."""
    like = first_dtensor(tensors)
    return None if like is None else sum_over_shards(like)


def sum_over_shards(like: DTensor, op=dist.ReduceOp.SUM):
    """``x -> x`` summed (or reduced by ``op``) over the mesh dimensions along which ``like`` is
    sharded (in place, an all-reduce per sharded dimension; replicated dimensions hold the same
    value already)."""
    mesh, placements = like.device_mesh, like.placements

    def reduce(x: Tensor) -> Tensor:
        for dim, placement in enumerate(placements):
            if placement.is_shard():
                dist.all_reduce(x, op=op, group=mesh.get_group(dim))
        return x
    return reduce
