"""The :class:`Rule` record (one direction rule in every tier) and the registry of optimizers.

A rule module (``torchopt_zoo/rules/<name>.py``) holds everything about one update rule: its state
keys, the reference math, the multi-tensor math, the Triton kernel with its launch arguments, the
floor bytes per parameter, and the optimizer class(es) built on it. The tier machinery
(:mod:`torchopt_zoo.tiers`) and the optimizer base (:mod:`.optimizer`) only ever see the
:class:`Rule` record. :func:`register` adds an optimizer class to :data:`OPTIMIZERS`, which the
tests (tier agreement, codegen bytes, line search), ``bench/step_speed.py`` and the README's
optimizer table read, so a new rule is covered by adding it. docs/adding-an-optimizer.md walks
through one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Launch:
    """One Triton launch of a fused step: the kernel, then the rule's own arguments in the kernel's
    order after the shared head (:func:`torchopt_zoo.tiers.triton.launches`): state ``tensors``
    (None for a buffer the flags never touch), float ``scalars`` and constexpr ``flags``."""

    kernel: Any
    tensors: tuple
    scalars: tuple = ()
    flags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CKernel:
    """A rule's step in C, for the CPU kernels (:mod:`torchopt_zoo.tiers.cpu`; the template
    ``cpu_step.c`` says what each piece may use).

    ``element``: the per-element update of ``p`` and the state tensors ``S0, S1, S2`` (``states``,
    in that order), with ``g`` the prepared gradient, ``lr_t`` the learning rate, ``k0..k4`` the
    first five of ``scalars(group)`` and ``u0..u3`` the tensor's own scalars. ``tensor``: per
    tensor, after its step count ``t`` was advanced, those scalars into ``ui[0..3]`` from ``t``,
    ``lr`` and ``k[0..7]`` (doubles), and updates of its 0-dim state ``Z(0)..``.
    ``reduce_term``/``reduced``: a group-wide sum of ``reduce_term`` over every element, handed to
    ``reduced`` as ``total`` before the element pass, which may update ``*group_scalar`` (the
    tensor ``group_scalar(group_state)``) and set ``R`` for the element code. ``flags(group)``:
    compile-time options (``-DNAME=value``)."""

    element: str
    states: tuple[str, ...] = ()
    scalars: Callable = lambda group: ()
    tensor: str = ""
    flags: Callable = lambda group: {}
    reduce_term: str = ""
    reduced: str = ""
    group_scalar: Callable | None = None


@dataclass(frozen=True)
class Rule:
    """One direction rule, as every tier runs it.

    ``reference(group, params, grads, states, steps)`` and ``foreach(...)`` (same arguments) update
    the state and return a :class:`~.direction.Direction`; ``params``/``grads`` are real tensors
    (complex ones as real views), the gradients already prepared (AMP scale, ``maximize``, coupled
    weight decay), ``steps`` the step count ``t`` of each parameter (from 1). Rules with
    ``group_wide`` state take a seventh argument, the group's shared state dict.

    ``launches(group, bucket, group_state)``: the Triton launches of one fused step over a flat
    bucket (:class:`~torchopt_zoo.tiers.flat.FusedBucket`), None where the rule has no kernel.
    ``prologue(group, bucket, found_inf)``: device-side work on the bucket's 0-dim state before
    the launches (NAdam's ``mu_product``). ``torch_kernel(group, bucket, grad, lr)``: torch's own
    single-pass kernel for the CPU flat buckets, returning False where torch has none.
    ``cpu``: the rule's step in C (:class:`CKernel`), the default tier on CPU where torch has no
    kernel for the rule.

    ``sparse(group, p, grad, state, t, lr)``: the whole step of one parameter whose gradient is
    sparse (torch's sparse Adagrad and SGD), None where the rule refuses sparse gradients.

    ``state``: the per-parameter state keys (besides ``step``) the rule may keep, shaped like the
    parameter; ``scalar_state``: its 0-dim per-parameter keys. ``floor_bytes``: the bytes per fp32
    parameter one step must move with the rule's default options (docs/algorithms.md,
    "Memory traffic"): parameter read and written, gradient read, each state tensor read and written.
    """

    name: str
    reference: Callable
    foreach: Callable
    floor_bytes: int
    state: tuple[str, ...]
    launches: Callable | None = None
    scalar_state: tuple[str, ...] = ()
    prologue: Callable | None = None
    torch_kernel: Callable | None = None
    group_wide: bool = False
    sparse: Callable | None = None
    cpu: CKernel | None = None


# Every registered optimizer class, in the order the rule modules register them. Each has the class
# attributes ``rule`` (a Rule), ``paper`` (markdown: authors, year, arXiv id), ``twin`` (the
# torch.optim class it replaces, or None) and ``configs`` (option sets the tests sweep, the rule's
# defaults first).
OPTIMIZERS: list[type] = []


def register(cls: type) -> type:
    """Class decorator: add a zoo optimizer to :data:`OPTIMIZERS` (after checking its record)."""
    for attr in ("rule", "paper", "twin", "configs"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} must define the class attribute {attr!r} to be registered")
    if not isinstance(cls.rule, Rule) or not isinstance(cls.rule.floor_bytes, int) or cls.rule.floor_bytes <= 0:
        raise TypeError(f"{cls.__name__}.rule must be a Rule with its floor_bytes (a positive int)")
    OPTIMIZERS.append(cls)
    return cls
