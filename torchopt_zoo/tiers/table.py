"""The default tier's Triton path: one launch per step over the user's own tensors.

A :class:`TableBucket` holds, for the parameters of one device and dtype of a param group, device
tables of int64 addresses — of the parameters, of their gradients and of each state tensor — and a
chunk table with one row per program: ``(tensor index, start, numel, addresses of the tensor's 0-dim
state in its first row)``. A rule's kernel (the same one the flat buffers run, with ``TABLE``) casts
the addresses to pointers, as in Triton's grouped-GEMM tutorial, and every program updates one
chunk of one tensor in place. Nothing the user owns is moved, copied or rebound.

The bucket keeps one device counter per 0-dim state key (``step``, NAdam's ``mu_product``): the
kernels read the counter (advanced before the launch, on the device) and the first program of each
tensor writes the new value into that tensor's own state, so ``state_dict()`` sees ordinary
per-parameter tensors (kept on the parameters' device in float32, as torch's fused optimizers keep
``step``). The tables are rebuilt only when an address changes: the check each step is a list of
``data_ptr()`` (host work, no device sync); a rebuild reads the step counts once to check that they
agree, and uploads the tables without blocking the host where the device is CUDA.
"""

from __future__ import annotations

import operator
from array import array
from itertools import chain

import torch
from torch import Tensor

from . import host
from .triton import BLOCK, tl

_TRITON_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _upload(values, device: torch.device) -> Tensor:
    """An int64 table on ``device`` from a list or an ``array("q")`` of addresses (copied)."""
    table = torch.frombuffer(array("q", values), dtype=torch.int64) if len(values) else torch.zeros(0, dtype=torch.int64)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


class AddressTable:
    """What a one-call step over the user's own tensors checks before each step: the parameters'
    addresses, the state dicts and the state tensors in them (``keys`` and ``scalar_keys``), by
    identity, and the new gradients (:meth:`load`, with :meth:`_take` storing their addresses).
    :class:`TableBucket` (Triton, CUDA) and :class:`~torchopt_zoo.tiers.cpu.CpuTable` (C, CPU)
    build on it."""

    def _remember(self, params: list[Tensor], states: list[dict]) -> None:
        self.addresses = self._addresses(params, states)
        n = len(params)
        # what the steady-state check compares: the parameters' addresses, the state dicts and the
        # state tensors in them (the optimizer's own objects) by identity; the gradients' addresses
        # as last loaded (-1: none yet), and where the compiled check writes the new ones
        self._param_addresses = array("q", self.addresses[:n])
        self._grad_addresses = array("q", [-1] * n)
        self._scratch = array("q", [0] * n)
        self._params = list(params)
        self._dicts = list(states)
        self._seen = None  # the optimizer's state mapping as last checked: (object, keys, values)
        self._state_keys = (*self.keys, *self.scalar_keys)
        self._get_state = operator.itemgetter(*self._state_keys)
        self._state_tensors = list(chain.from_iterable(map(self._tuple_of_state, states)))

    def _addresses(self, params, states) -> list[int]:
        keys = (*self.keys, *self.scalar_keys)
        return [p.data_ptr() for p in params] + [s[k].data_ptr() for s in states for k in keys]

    def _tuple_of_state(self, state: dict) -> tuple:
        got = self._get_state(state)
        return got if isinstance(got, tuple) else (got,)

    def holds(self, params: list[Tensor], state_of: dict) -> bool:
        """The steady-state check, before any per-parameter Python work: every one of ``params``
        (a whole param group, as when the table was built) still has the address the table holds
        and a gradient the table can take (loaded, see :meth:`load`), and ``state_of`` (the
        optimizer's state) still maps each to the same state dict holding the same tensors.
        False where the slow path must look (a rebound parameter, a missing, sparse or
        non-contiguous gradient, replaced or reloaded state). The per-tensor work is the compiled
        check of ``tiers/host.py`` where it is built, else :meth:`_holds_reference`."""
        compiled = host.checker()
        if len(params) != len(self._params) or not self._maps_to_dicts(state_of, compiled):
            return False
        if compiled is None:
            return self._holds_reference(params)
        code = compiled.holds(params, self._params, self._param_addresses.buffer_info()[0], self._dicts,
                              self._state_keys, self._state_tensors, self._grad_addresses.buffer_info()[0],
                              self._scratch.buffer_info()[0])
        if code == 2:  # new gradient addresses, written to the scratch array
            self._take(self._scratch)
            self._grad_addresses, self._scratch = self._scratch, self._grad_addresses
        return code != 0

    def _holds_reference(self, params: list[Tensor]) -> bool:
        """:meth:`holds`'s per-tensor checks in Python (what ``host_check.cpp`` does)."""
        try:
            return (array("q", map(Tensor.data_ptr, params)) == self._param_addresses
                    and all(map(operator.is_, params, self._params))
                    and all(map(operator.is_, chain.from_iterable(map(self._tuple_of_state, self._dicts)),
                                self._state_tensors))
                    and self.load([p.grad for p in params]))
        except (AttributeError, KeyError, RuntimeError, TypeError):  # no gradient, a sparse one, a state key gone
            return False

    def _maps_to_dicts(self, state_of: dict, compiled=None) -> bool:
        """Whether ``state_of`` maps the parameters to the state dicts the table holds. Unchanged
        since the last check (the same object, keys and values, by identity: no hashing of
        tensors; ``compiled.same_items`` where the compiled check is there) it does; else each
        parameter is looked up."""
        seen = self._seen
        if seen is not None and seen[0] is state_of:
            _, keys, values = seen
            if compiled is not None and isinstance(state_of, dict):
                unchanged = compiled.same_items(state_of, keys, values)
            else:
                unchanged = (len(state_of) == len(keys) and all(map(operator.is_, state_of, keys))
                             and all(map(operator.is_, state_of.values(), values)))
            if unchanged:
                return True
        if not all(map(operator.is_, map(state_of.get, self._params), self._dicts)):
            return False
        self._seen = (state_of, list(state_of), list(state_of.values()))
        return True

    def matches(self, params: list[Tensor], states: list[dict]) -> bool:
        """Whether the table still holds these parameters' and states' addresses (O(n) host work;
        a parameter rebound to other storage, of any dtype, has another address)."""
        return self._addresses(params, states) == self.addresses

    def load(self, grads: list[Tensor]) -> bool:
        """Point the gradient table at ``grads`` (stored again only where an address changed);
        False where a gradient is not a dense contiguous tensor of the parameters' dtype."""
        addresses = array("q", map(Tensor.data_ptr, grads))  # a sparse gradient has none: RuntimeError
        if any(g.dtype != self.dtype or not g.is_contiguous() for g in grads):
            return False
        if addresses != self._grad_addresses:
            self._take(addresses)
            self._grad_addresses = addresses
        return True

    def _take(self, addresses: array) -> None:
        raise NotImplementedError


class TableBucket(AddressTable):
    """Address tables for one step of a rule over ``params`` (one device and dtype) and ``states``.
    Build it with :meth:`build`, which returns None where the parameters cannot share one launch
    (different step counts, or state that is missing or not shaped like its parameter)."""

    def __init__(self, rule, params: list[Tensor], states: list[dict], keys: list[str]) -> None:
        first = params[0]
        self.device, self.dtype = first.device, first.dtype
        self.triton_dtype = getattr(tl, _TRITON_DTYPES[first.dtype])
        self.scalar_keys = ("step", *rule.scalar_state)
        self.row = 3 + len(self.scalar_keys)
        self.keys = keys
        self.scalars = {key: states[0][key].clone() for key in self.scalar_keys}  # the device counters
        self.steps = self.scalars["step"]
        rows = []
        for i, (p, state) in enumerate(zip(params, states)):
            n = p.numel()
            for start in range(0, n, BLOCK):
                scalars = [state[k].data_ptr() if start == 0 else 0 for k in self.scalar_keys]
                rows += [i, start, n, *scalars]
        self.programs = len(rows) // self.row
        self.chunks = _upload(rows, self.device)
        self.param = _upload([p.data_ptr() for p in params], self.device)
        self.flats = {k: _upload([s[k].data_ptr() for s in states], self.device) for k in keys}
        self.grad = None
        self._remember(params, states)

    @classmethod
    def build(cls, rule, params: list[Tensor], states: list[dict]) -> TableBucket | None:
        first = params[0]
        keys = [k for k in rule.state if k in states[0]]
        for state, p in zip(states, params):
            if any(not isinstance(state.get(k), Tensor) or state[k].shape != p.shape or not state[k].is_contiguous()
                   for k in keys) or not p.is_contiguous():
                return None
            for key in ("step", *rule.scalar_state):  # on the device, float32: the kernels write them
                if state[key].device != first.device or state[key].dtype != torch.float32:
                    state[key] = state[key].to(device=first.device, dtype=torch.float32)
        for key in ("step", *rule.scalar_state):
            values = torch.stack([s[key] for s in states])
            if not bool((values == values[0]).all()):  # one read, at a rebuild only
                return None
        return cls(rule, params, states, keys)

    def _take(self, addresses: array) -> None:
        self.grad = _upload(addresses, self.device)

    def step(self, rule, group: dict, group_state: dict, grad_scale: Tensor | None, found_inf: Tensor | None) -> bool:
        """One launch of the rule's kernels over the tables (always taken, as every table's
        ``step`` answers whether it was)."""
        from . import triton as _triton  # only where Triton runs
        _triton.step(rule, group, self, group_state, grad_scale, found_inf)
        return True
