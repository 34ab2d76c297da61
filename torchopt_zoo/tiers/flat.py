"""The opt-in flat buffers (``fused="flat"``): a param group's parameters, gradients and state in
flat buffers, one pass per step. The default tier never moves a user's tensor (:mod:`.table`,
:mod:`.torch_fused`); this one does, for the fastest step in a ``zero_grad(set_to_none=False)``
loop, with the trade-offs of docs/fused-tier.md.

Layout (:class:`FusedGroup`, one per param group: a :class:`FusedBucket` per device and dtype of
its parameters that have gradients; frozen parameters, ``requires_grad=False``, stay out). At the
group's first step

* the parameters move into one flat buffer per bucket (for the Triton kernels zero-padded to a
  multiple of :data:`PAD` elements): each ``p.data`` is rebound to a view of it, so the
  ``Parameter`` objects, the modules holding them and their values stay the same;
* every state key (``exp_avg``, ...) gets one flat buffer, float32 for bf16/fp16 parameters, and the
  per-parameter entries of ``optimizer.state`` become views of it (``state_dict()`` and torch
  interchange see ordinary per-parameter tensors); the ``step`` counters too (0-dim views, on the
  parameters' device, as torch's fused optimizers keep them);
* gradients: ``optimizer.zero_grad(set_to_none=False)`` rebinds each existing ``p.grad`` to a view
  of the group's flat gradient buffer and zeroes that buffer with one fill. Autograd then
  accumulates the next gradients into it in place, so the step reads them where they are. Any other
  gradient (``None`` after ``zero_grad()``, then a fresh one from autograd, or a tensor the user
  assigned) is copied in with one multi-tensor copy. The step only reads ``p.grad``.

A group qualifies when its parameters are of real floating dtypes and contiguous, and no tensor
outside the group shares their storage (so rebinding cannot detach it), or they already lie in
order in one of our flat buffers (after ``load_state_dict``); at a step every parameter that
requires grad must have a dense gradient, those of a bucket the same step count, and a rule with
state over the whole group (AdaGrad-Norm) takes one bucket. Otherwise the step takes the
multi-tensor list tier, with a ``FlatBuffersWarning`` that says why.

The fast path does O(1) host work per bucket (plus one ``p.grad is None`` per frozen parameter), so
that on CUDA a step over thousands of tensors is one kernel launch per device and dtype: it is taken
when the use counts of the flat parameter and gradient storages show that no parameter or gradient
was rebound since the bucket last checked them, and the gradient buffer was written (its version
counter moved) since the last step. Anything else goes through :meth:`FusedGroup.holds`, which
checks every parameter. (Not caught: a gradient replaced while the code still holds a reference to
the old one, and a gradient buffer written since the last step.)

Kernels: on CUDA the rule's Triton kernel for float32/bf16/fp16 parameters (:mod:`.triton`, which
also applies AMP's ``grad_scale``/``found_inf`` and reads a tensor ``lr`` on the device without a
host sync); on CPU and for float64 torch's own single-pass kernel where torch has one for the rule
(:mod:`.torch_fused`), else the rule's multi-tensor math run on the single flat tensors.
``TORCHOPT_ZOO_TRITON=1`` runs the Triton kernels on CPU tensors too (with ``TRITON_INTERPRET=1``;
the tests do).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .._validation import as_float
from ..core.direction import apply_foreach
from ..core.state import LOW_PRECISION

# The Triton kernels' flat buffers are zero-padded to a multiple of PAD elements: Triton's JIT then
# specialises their length as divisible by 16 and emits 128-bit accesses (tests/test_triton_codegen.py).
# Padding starts at zero in every buffer; every rule keeps a parameter with zero gradient and zero
# state at zero, and no view of the padding is ever handed out. Torch's CPU kernel gets unpadded
# buffers: it splits a buffer into vector and scalar parts by its length, and with the same split
# as over the separate tensors its results stay bitwise torch's fused Adam's (tests/test_torch_parity.py).
PAD = 16


def padded(numel: int) -> int:
    """``numel`` rounded up to a multiple of :data:`PAD`."""
    return -(-numel // PAD) * PAD


def _use_count(t: Tensor) -> int:
    """How many tensors share ``t``'s storage (plus one for the storage object asked for here)."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _adopt(tensors: list[Tensor | None]) -> Tensor | None:
    """The flat tensor behind ``tensors`` when they lie in order, contiguous, over one whole
    storage of their total or :func:`padded` length."""
    if any(t is None or not t.is_contiguous() for t in tensors):
        return None
    first = tensors[0]
    storage, offset = first.untyped_storage(), first.storage_offset()
    if offset != 0:
        return None
    for t in tensors:
        if (t.storage_offset() != offset or t.dtype != first.dtype
                or t.untyped_storage().data_ptr() != storage.data_ptr()):
            return None
        offset += t.numel()
    length = storage.nbytes() // first.element_size()
    if length not in (offset, padded(offset)):
        return None
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, 0, (length,))


def partition(params: list[Tensor], companions: list) -> list[tuple[list[Tensor], list]]:
    """``params`` and their companions (states, gradients) split by the parameters' device and
    dtype, in order of first appearance."""
    parts: dict[tuple, tuple[list, list]] = {}
    for p, s in zip(params, companions):
        ps, ss = parts.setdefault((p.device, p.dtype), ([], []))
        ps.append(p)
        ss.append(s)
    return list(parts.values())


def _movable(params: list[Tensor], group_params: list[Tensor]) -> bool:
    """Whether rebinding ``params`` to views of a new buffer detaches no other tensor: each is
    contiguous, and every tensor on its storage is a parameter of the group (the storage of a
    bucket that was given up, say), without overlaps."""
    on_storage: dict[int, list[Tensor]] = {}
    for q in group_params:
        on_storage.setdefault(q.untyped_storage().data_ptr(), []).append(q)
    for p in params:
        sharers = on_storage[p.untyped_storage().data_ptr()]
        if not p.is_contiguous() or _use_count(p) != len(sharers) + 1:
            return False
        spans = sorted((q.storage_offset(), q.storage_offset() + q.numel()) for q in sharers)
        if any(end > start for (_, end), (start, _) in zip(spans, spans[1:])):
            return False
    return True


def ineligible(group_params: list[Tensor], params: list[Tensor], states: list[dict], whole_group: bool) -> str:
    """Why the group cannot take the fused tier at this step ('' when it can). ``params`` are the
    parameters with a gradient; ``whole_group``: the rule keeps state over the whole group, so
    its parameters must fit one bucket (one device and dtype)."""
    held = {id(p) for p in params}
    if any(p.requires_grad and id(p) not in held for p in group_params):
        return "a parameter that requires grad has no gradient at this step"
    if any(not p.is_floating_point() for p in params):
        return "a parameter is not of a real floating dtype"
    parts = partition(params, states)
    if whole_group and len(parts) > 1:
        return "the group mixes devices or dtypes, and the rule keeps state over the whole group"
    for ps, ss in parts:
        if any(s.get("step") != ss[0].get("step") for s in ss):
            return "the parameters have taken different numbers of steps"
        if _adopt(ps) is None and not _movable(ps, group_params):
            return ("a parameter is not contiguous or shares its storage with another tensor "
                    "(moving it into a flat buffer would detach them)")
    return ""


def use_triton(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a bucket runs the Triton kernels: on CUDA (or with ``TORCHOPT_ZOO_TRITON=1``), for
    float32/bf16/fp16 parameters (the kernels compute in float32), where Triton imports."""
    if dtype not in (torch.float32, *LOW_PRECISION):
        return False
    if device.type != "cuda" and os.environ.get("TORCHOPT_ZOO_TRITON") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class FlatBucket:
    """Parameters (of one device and dtype) and their per-parameter state in flat buffers: each
    ``p.data`` and each state tensor shaped like its parameter becomes a view of one buffer per
    key (``flats``, in the state's dtype); the 0-dim per-parameter state under ``scalar_keys``
    (``step`` counters, NAdam's ``mu_product``), where the states have it, becomes 0-dim views of
    one stacked tensor per key on the parameters' device (``scalars``; ``steps`` for ``step``).
    ``length``: the buffers' length (the parameters' total, or more for zero padding)."""

    def __init__(self, params: list[Tensor], states: list[dict], length: int | None = None,
                 scalar_keys: tuple[str, ...] = ("step",)) -> None:
        self.members, self.n = params, len(params)
        self.numels = [p.numel() for p in params]
        first = params[0]
        self.param = _adopt(params)
        if self.param is None:
            self.param, views = _flat_copy(params, self.numels, first.dtype, length or sum(self.numels))
            for p, view in zip(params, views):
                p.data = view
            del views, view  # the fast path counts the tensors on the flat storage
        self.offsets = [0]
        for n in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.flats: dict[str, Tensor] = {}
        for key, value in states[0].items():
            if key not in scalar_keys and isinstance(value, Tensor) and all(
                    isinstance(s.get(key), Tensor) and s[key].shape == p.shape for s, p in zip(states, params)):
                self.flats[key], views = _flat_copy([s[key] for s in states], self.numels, value.dtype,
                                                       self.param.numel())
                for state, view in zip(states, views):
                    state[key] = view
                del views, view  # (counted by record_views)
        self.scalars: dict[str, Tensor] = {}
        for key in scalar_keys:
            if all(isinstance(s.get(key), Tensor) for s in states):
                self.scalars[key] = torch.stack([s[key] for s in states]).to(first.device)
                for state, view in zip(states, self.scalars[key].unbind()):
                    state[key] = view
        self.steps = self.scalars.get("step")
        self.record_views()

    def _outside(self, flat: Tensor, tensors: list[Tensor]) -> list[int]:
        """Indices of the tensors that are not their contiguous view of ``flat``."""
        base, size = flat.data_ptr(), flat.element_size()
        return [i for i, (t, o) in enumerate(zip(tensors, self.offsets))
                if t.data_ptr() != base + o * size or t.dtype != flat.dtype or not t.is_contiguous()]

    def holds_params(self, params: list[Tensor]) -> bool:
        """O(n): ``params`` are the members, each still its view of the parameter buffer."""
        return (len(params) == self.n and all(p is q for p, q in zip(params, self.members))
                and not self._outside(self.param, params))

    def holds_views(self, params: list[Tensor], states: list[dict]) -> bool:
        """O(n): :meth:`holds_params`, and the states are still views of the state buffers
        (``load_state_dict`` replaces the state tensors, say)."""
        return self.holds_params(params) and not any(
            self._outside(flat, [s.get(key) for s in states]) for key, flat in self.flats.items())

    def record_views(self) -> None:
        """Remember how many tensors share each buffer, for :meth:`views_unchanged`."""
        self._view_counts = [_use_count(t) for t in (self.param, *self.flats.values())]

    def views_unchanged(self) -> bool:
        """O(1): no view of a buffer was dropped or added since :meth:`record_views` (rebinding a
        parameter's ``data`` or replacing a state tensor drops one)."""
        return [_use_count(t) for t in (self.param, *self.flats.values())] == self._view_counts


class FusedBucket(FlatBucket):
    """A :class:`FlatBucket` of a param group with a flat gradient buffer, stepped in one pass."""

    def __init__(self, params: list[Tensor], states: list[dict], rule) -> None:
        first = params[0]
        self.triton = use_triton(first.device, first.dtype)
        total = sum(p.numel() for p in params)
        super().__init__(params, states, padded(total) if self.triton else total,
                         ("step", *rule.scalar_state))
        self.grad = _adopt([p.grad for p in params])
        if self.grad is not None and self.grad.numel() != self.param.numel():
            self.grad = None
        self.grads_bound = self.grad is not None
        if self.grad is None:
            self.grad = torch.zeros_like(self.param)
        self._record()

    def _record(self) -> None:
        """Remember the storage use counts and the gradient version the fast path compares with
        (after the parameters were checked to be the buffer's views)."""
        self.record_views()
        self._record_grads()

    def _record_grads(self) -> None:
        """Remember the gradient buffer's use count and version, and nothing about the parameters:
        ``zero_grad`` never checks them, so a parameter rebound before it must still show at the
        next step."""
        self._grad_refs = _use_count(self.grad)
        self._grad_version = self.grad._version

    # ---------------------------------------------------------------- checks
    def intact(self) -> bool:
        """O(1): nothing was rebound since the last check and new gradients are in the buffer."""
        return (self.grads_bound and self.grad._version != self._grad_version
                and self.views_unchanged() and _use_count(self.grad) == self._grad_refs)

    def holds(self, params: list[Tensor]) -> bool:
        """O(n): ``params`` are the bucket's members, each still its view of the flat buffer."""
        return self.holds_params(params) and bool((self.steps == self.steps[0]).all())

    # ---------------------------------------------------------------- gradients
    def load(self, grads: list[Tensor]) -> None:
        """Copy into the flat gradient buffer every gradient that is not already a view of it."""
        outside = self._outside(self.grad, grads)
        if outside:
            views = self.grad[:sum(self.numels)].split(self.numels)
            torch._foreach_copy_([views[i] for i in outside], [grads[i].reshape(-1) for i in outside])
            del views  # before _record counts the tensors on the gradient storage
        self.grads_bound = not outside
        self._record()

    def zero_grads(self) -> list[Tensor]:
        """``zero_grad(set_to_none=False)`` for the group: bind every existing gradient that is not a
        view of some other tensor (DDP's buckets, say) to a view of the flat buffer, zero the buffer
        with one fill; returns the gradients left to zero one by one."""
        if self.grads_bound and _use_count(self.grad) == self._grad_refs:
            self.grad.zero_()
            self._record_grads()
            return []
        base, size, others, bound = self.grad.data_ptr(), self.grad.element_size(), [], 0
        for p, o, n in zip(self.members, self.offsets, self.numels):
            g = p.grad
            if g is None:
                continue
            if g.data_ptr() == base + o * size and g.is_contiguous() and g.dtype == self.grad.dtype:
                bound += 1
            elif g._base is None and not g.requires_grad and g.shape == p.shape:
                p.grad = self.grad[o:o + n].view(p.shape)
                bound += 1
            else:
                others.append(g)
        self.grad.zero_()
        self.grads_bound = bound == self.n
        self._record_grads()
        return others

    # ---------------------------------------------------------------- steps
    def step(self, rule, group: dict, group_state: dict, grad_scale: Tensor | None,
             found_inf: Tensor | None, prepare, direction) -> None:
        """One step of ``rule`` over the bucket: the Triton kernels (:mod:`.triton`), else torch's own
        kernel for the rule, else the rule's multi-tensor math over the flat tensors.
        ``prepare(params, grads)`` and ``direction(rule_fn, params, grads, states, steps)`` are the
        optimizer's gradient preparation and rule call, for the last two."""
        if self.triton:
            from . import triton as _triton  # only where Triton runs
            _triton.step(rule, group, self, group_state, grad_scale, found_inf)
        elif found_inf is None or not found_inf.item():
            from . import torch_fused
            self.steps.add_(1)
            states, step = {**self.flats, **self.scalars}, self.steps[0]
            run = torch_fused.kernel(rule, group, [self.param], [self.grad], [step])
            if run is None:
                grad = prepare([self.param], [self.grad])[0]
                d = direction(rule.foreach, [self.param], [grad], [states], [step.item()])
                apply_foreach([self.param], d, as_float("lr", group["lr"]))
            else:  # torch's kernel applies maximize and weight decay itself
                torch_fused.launch(run, group, [self.param], [self.grad], [states], [step], grad_scale, None)
        self._grad_version = self.grad._version


class FusedGroup:
    """The fused buckets of one param group: one per device and dtype of the parameters that have
    gradients. Parameters without a gradient that do not require one (frozen) stay out; the fast
    path checks that they still have none."""

    def __init__(self, group_params: list[Tensor], params: list[Tensor], states: list[dict], rule) -> None:
        self.group_list, self.n = group_params, len(group_params)
        self.buckets = [FusedBucket(ps, ss, rule) for ps, ss in partition(params, states)]
        held = {id(p) for p in params}
        self.frozen = [p for p in group_params if id(p) not in held]

    def intact(self, group_params: list[Tensor]) -> bool:
        """O(buckets + frozen parameters): see :meth:`FusedBucket.intact`."""
        return (group_params is self.group_list and len(group_params) == self.n
                and all(b.intact() for b in self.buckets) and all(p.grad is None for p in self.frozen))

    def holds(self, group_params: list[Tensor], params: list[Tensor]) -> bool:
        """O(n): the parameters with gradients are still the buckets' members, in their views."""
        if group_params is not self.group_list or len(group_params) != self.n:
            return False
        parts = partition(params, params)
        return len(parts) == len(self.buckets) and all(b.holds(ps) for b, (ps, _) in zip(self.buckets, parts))

    def load(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """:meth:`FusedBucket.load` for every bucket (``grads`` are those of ``params``)."""
        for bucket, (_, gs) in zip(self.buckets, partition(params, grads)):
            bucket.load(gs)

    def zero_grads(self) -> list[Tensor]:
        """:meth:`FusedBucket.zero_grads` for every bucket; returns the gradients left to zero."""
        rest = [p.grad for p in self.frozen if p.grad is not None]
        for bucket in self.buckets:
            rest += bucket.zero_grads()
        return rest


def _flat_copy(tensors: list[Tensor], numels: list[int], dtype: torch.dtype,
               length: int) -> tuple[Tensor, list[Tensor]]:
    """A new flat buffer of ``length`` elements holding ``tensors`` in order (as ``dtype``; zeros
    after them), and its views shaped like them."""
    total = sum(numels)
    flat = torch.empty(length, dtype=dtype, device=tensors[0].device)
    flat[total:].zero_()
    views = [v.view(t.shape) for v, t in zip(flat[:total].split(numels), tensors)]
    torch._foreach_copy_(views, [t.detach() for t in tensors])
    return flat, views
