"""``ZooOptimizer``: the ``torch.optim.Optimizer`` subclass every zoo optimizer is built on.

A zoo optimizer is a *direction rule* (how state and gradient become an update direction: a
:class:`~.rule.Rule` written once per tier in its own module, ``torchopt_zoo/rules/<name>.py``)
plus a step size. This class keeps torch's contract
around it:

* param groups, ``add_param_group`` (validated before it is added), per-group hyperparameters,
  ``zero_grad``, ``step(closure)`` returning the closure's loss, step and state_dict hooks (all
  inherited from ``torch.optim.Optimizer``);
* lazy per-parameter state with a float32 tensor ``step`` kept as torch keeps it (on the CPU; on
  the parameters' device where Triton kernels run, as for torch's fused optimizers), so
  state_dicts interchange with the matching ``torch.optim`` optimizer;
* ``maximize``, coupled L2 weight decay (``g += wd * p``) and ``decoupled_weight_decay=True``
  (``p *= 1 - lr * wd``), tensor learning rates, complex parameters (as real views);
* never writes into ``p.grad`` and never keeps a reference to it in state;
* tiers: ``foreach=False`` runs the reference rule tensor by tensor, ``foreach=True`` the
  multi-tensor rule over the list of tensors; the default (``fused=None`` or ``True``,
  ``foreach=None``) runs single-pass kernels over the user's own tensors where the rule has one
  (its Triton kernel over address tables on CUDA, :mod:`torchopt_zoo.tiers.table`; torch's fused
  kernel on CPU, :mod:`torchopt_zoo.tiers.torch_fused`), else the multi-tensor tier; nothing the
  user owns is moved or rebound. ``fused="flat"`` opts into flat buffers
  (:mod:`torchopt_zoo.tiers.flat`: the parameters become views of one buffer; docs/fused-tier.md).
  bench/step_speed.py measures all of them;
* AMP: ``torch.amp.GradScaler`` hands the step its ``grad_scale`` and ``found_inf`` (as it does
  for torch's fused optimizers); the fused tier applies them on the device without a host sync,
  the other tiers read ``found_inf`` once per step. ``p.grad`` is never unscaled in place.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from .._pickling import PicklesAttributes
from .._validation import as_float, check_choice, check_range
from ..stepsize import trials as _trials
from ..stepsize.backtracking import Backtracking
from ..tiers import flat as _fused
from ..tiers import table as _table
from ..tiers import cpu as _cpu
from ..tiers import torch_fused as _torch_fused
from . import direction as _direction
from . import sharding as _sharding
from .rule import Rule
from .state import LOW_PRECISION, scalar_dtype, state_dtype

STAT_KEYS = ("steps", "function_evals", "gradient_evals", "trials", "failures", "fallbacks")
# what one searched step reports (``line_search_stats["last"]``), as it stands before the first
LAST_STEP = {"alpha": 0.0, "trials": 0, "function_evals": 0, "gradient_evals": 0, "success": False, "reason": "",
             "fallback": False}

FUSED = (None, True, False, "flat")  # the values of ``fused``: torch's, plus the opt-in flat buffers

TIERS = {
    "reference": _direction.apply_reference,
    "foreach": _direction.apply_foreach,
}


class FlatBuffersWarning(UserWarning):
    """``fused="flat"`` could not move a param group into flat buffers; the step took the
    multi-tensor tier (the message says why)."""


class ZooOptimizer(PicklesAttributes, torch.optim.Optimizer):
    """Base class: subclasses set ``rule`` (a :class:`~.rule.Rule`), implement :meth:`_new_state`
    and :meth:`_check_group`, and pass their defaults (which must include ``lr``,
    ``weight_decay``, ``maximize``, ``decoupled_weight_decay``, ``foreach`` and ``fused``). A rule
    with state over the whole group (``rule.group_wide``) also implements :meth:`_shared_state`."""

    rule: ClassVar[Rule]
    # a per-coordinate (diagonal) preconditioner, as Adam's or AdaGrad's: schedules.refine weighs
    # such optimizers' gradient norms in l1, others in l2
    diagonal_adaptive: ClassVar[bool] = False
    _pickled = ("line_search", "_group_keys")
    # every parameter's state made at construction (as with a line search): optimizers with state
    # beyond their parameters' (AdAdaGrad's batch size) set it
    _state_at_construction: ClassVar[bool] = False

    def __init__(self, params, defaults: dict[str, Any], line_search: Backtracking | None = None) -> None:
        if line_search is not None and not isinstance(line_search, Backtracking):
            raise TypeError(f"line_search must be None or torchopt_zoo.stepsize.Backtracking(...), "
                            f"got {type(line_search).__name__}")
        self.line_search = line_search
        self._check_group(defaults)  # as torch.optim: a bad argument fails before the parameters are read
        self._group_keys = tuple(defaults)  # a group's own keys (torch adds "differentiable" to defaults on load)
        self._fused: dict[int, _fused.FusedGroup] = {}
        self._tables: dict[tuple, _table.TableBucket] = {}  # per (group, device, dtype)
        self._group_tables: dict[int, _table.TableBucket] = {}  # a group's bucket when it spans the group
        # torch.amp.GradScaler then passes grad_scale/found_inf to step() instead of unscaling p.grad
        self._step_supports_amp_scaling = line_search is None
        super().__init__(params, defaults)

    # ----------------------------------------------------------------- groups and validation
    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate one merged param group; subclasses extend it with their own hyperparameters."""
        check_range("lr", group["lr"], 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_choice("foreach", group["foreach"], (None, True, False))
        check_choice("fused", group["fused"], FUSED)
        check_choice("capturable", group["capturable"], (True, False))
        check_choice("differentiable", group["differentiable"], (True, False))
        if group["fused"] and group["differentiable"]:
            raise RuntimeError("`fused` does not support `differentiable`")
        if group["fused"] and group["foreach"]:
            raise RuntimeError(f"`fused` and `foreach` cannot be `True` together (fused={group['fused']!r}, "
                               "foreach=True); leave foreach=None")
        check_choice("maximize", group["maximize"], (True, False))
        check_choice("decoupled_weight_decay", group["decoupled_weight_decay"], (True, False))
        if self.line_search is not None and group["decoupled_weight_decay"] and group["weight_decay"]:
            raise ValueError("decoupled_weight_decay=True with line_search is not supported: the "
                             "search moves along one direction from x; use weight_decay with "
                             "decoupled_weight_decay=False (the search then includes "
                             "(weight_decay/2)|x|^2 in the objective), or weight_decay=0")
        if self.line_search is not None and group["differentiable"]:
            raise ValueError("differentiable=True with line_search is not supported: the search "
                             "chooses its step from forward evaluations; leave differentiable=False")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_group(merged)
        super().add_param_group(param_group)
        if self.line_search is not None or self._state_at_construction:
            # state that exists from the start, so a distributed checkpoint's template
            # (torch.distributed.checkpoint.state_dict, which otherwise makes it by calling step()
            # without the closure a searched step needs, and only where no state exists) holds
            # every key
            group = self.param_groups[-1]
            for p in group["params"]:
                self._make_state(p, group)
            if self.param_groups[0]["params"] and self.line_search is not None:
                self._line_search_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state_dict from torch.optim (or an older zoo version) may lack our keys.
        super().__setstate__(state)
        self.__dict__.setdefault("line_search", None)
        self._fused = {}  # loaded state tensors are no longer views of the flat buffers
        self._tables, self._group_tables = {}, {}
        self.__dict__.setdefault("_step_supports_amp_scaling", self.line_search is None)
        legacy = self.state.pop("line_search", None)  # where older versions kept the counters
        if self.param_groups and self.param_groups[0]["params"]:
            first = self.param_groups[0]["params"][0]
            stats = legacy if isinstance(legacy, dict) else self.state.get(first, {}).get("line_search")
            if isinstance(stats, dict):  # never share it with the source
                self.state[first]["line_search"] = {k: v for k, v in stats.items() if k != "last"}
        keys = self.__dict__.get("_group_keys") or [k for k in self.defaults if k != "differentiable"]
        for group in self.param_groups:
            for key in keys:
                group.setdefault(key, self.defaults[key])
            for p in group["params"]:  # torch casts loaded state to the parameter's dtype
                state = self.state.get(p, {})
                if "step" in state and not isinstance(state["step"], Tensor):  # older state_dicts
                    state["step"] = torch.tensor(float(state["step"]), dtype=scalar_dtype())
                for key, value in state.items():
                    if (key != "step" and isinstance(value, Tensor) and value.is_floating_point()
                            and value.shape == p.shape and value.dtype != state_dtype(p)):
                        state[key] = value.to(state_dtype(p))
                    elif key in self.rule.scalar_state and isinstance(value, Tensor) and value.dtype != scalar_dtype():
                        state[key] = value.to(scalar_dtype())  # torch casts it to the parameter's dtype

    # ----------------------------------------------------------------- state
    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state tensors (besides ``step``) of a parameter at its first step."""
        raise NotImplementedError

    def _group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        """State shared by a whole group lives in the state of the group's first parameter."""
        return self.state[group["params"][0]]

    def _shared_state(self, group: dict[str, Any]) -> dict[str, Any]:
        """The group-wide state a rule needs besides the per-parameter state (none by default)."""
        return {}

    # ----------------------------------------------------------------- the step
    def _tier(self, group: dict[str, Any]) -> str:
        """``"reference"``, ``"foreach"`` (tensor lists), ``"fused"`` (single-pass kernels over the
        user's tensors, where the rule has one for their device and dtype) or ``"flat"`` (the
        opt-in flat buffers)."""
        if group["differentiable"] or torch.jit.is_scripting():
            return "reference"
        if torch.compiler.is_compiling():
            return "reference" if group["foreach"] is False else "foreach"
        if group["fused"] == "flat":
            return "flat"
        if group["fused"] is True:
            return "fused"
        if group["foreach"] is False:
            return "reference"
        if group["foreach"] or group["fused"] is False:
            return "foreach"
        return "fused"

    def _init_group(self, group, params: list, grads: list, sparse_params: list, sparse_grads: list) -> None:
        """Fill the lists with the parameters that have a gradient (dense or sparse) and their
        gradients, making the state of each where it is missing. Named and shaped as torch.optim's:
        under ``torch.compile`` dynamo runs it eagerly while tracing and guards on the state it made,
        so the first step does not cost a recompile."""
        fused = group["fused"] is True
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if fused:
                _torch_fused.check_fused_device(p)
            if g.is_sparse and self.rule.sparse is None:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            self._make_state(p, group)
            (sparse_params if g.is_sparse else params).append(p)
            (sparse_grads if g.is_sparse else grads).append(g)

    def _make_state(self, p: Tensor, group) -> None:
        """``p``'s state where it has none: ``step`` and the rule's :meth:`_new_state`."""
        state = self.state[p]
        if "step" not in state:
            # state loaded from an optimizer that keeps no step (torch's SGD): it has stepped
            stepped = any(key in state for key in self.rule.state)
            state["step"] = torch.tensor(float(stepped), dtype=scalar_dtype(),
                                         device=p.device if group["capturable"] else None)
            for key, value in self._new_state(p, group).items():
                state.setdefault(key, value)

    def _collect(self, group):
        """Parameters with a dense gradient, their gradients and their states, and ``(p, grad,
        state)`` of the parameters whose gradient is sparse (for rules with a sparse step)."""
        params, grads, sparse_params, sparse_grads = [], [], [], []
        self._init_group(group, params, grads, sparse_params, sparse_grads)
        sparse = [(p, g, self.state[p]) for p, g in zip(sparse_params, sparse_grads)]
        return params, grads, [self.state[p] for p in params], sparse

    def _sparse_step(self, group, sparse, grad_scale, found_inf) -> None:
        """The rule's step for parameters with sparse gradients (embeddings with ``sparse=True``),
        one tensor at a time, as torch.optim does (AMP: skipped where ``found_inf`` is set, the
        gradient divided by ``grad_scale``)."""
        if group["weight_decay"]:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        if found_inf is not None and bool(found_inf.item()):
            return
        lr = as_float("lr", group["lr"])
        for p, g, state in sparse:
            if grad_scale is not None:
                g = g / grad_scale.to(g.device)
            state["step"] += 1
            self.rule.sparse(group, p, -g if group["maximize"] else g, state, float(state["step"]), lr)

    def _prepare(self, group, params, grads, tier, lr, grad_scale=None):
        """AMP's ``grad_scale``, float32 for bf16/fp16 gradients (the state's dtype), ``maximize``
        and weight decay; new tensors, never ``p.grad`` itself."""
        wd = group["weight_decay"]
        foreach = tier != "reference"
        if grad_scale is not None:
            grads = [g / grad_scale.to(g.device) for g in grads]
        if any(g.dtype in LOW_PRECISION for g in grads):
            grads = [g.float() if g.dtype in LOW_PRECISION else g for g in grads]
        if group["maximize"]:
            grads = torch._foreach_neg(grads) if foreach else [-g for g in grads]
        if wd != 0:
            if group["decoupled_weight_decay"]:
                factor = 1 - lr * wd
                if foreach:
                    torch._foreach_mul_(params, factor)
                else:
                    for p in params:
                        p.mul_(factor)
            elif foreach:
                grads = torch._foreach_add(grads, params, alpha=wd)
            else:
                grads = [g.add(p, alpha=wd) for g, p in zip(grads, params)]
        return params, grads

    def _fused_group(self, group, params, grads, states) -> _fused.FusedGroup | None:
        """The group's fused buckets, holding ``grads``, or None when the group does not qualify
        at this step (see :mod:`torchopt_zoo.tiers.flat`)."""
        fused = self._fused.get(id(group))
        if fused is None or not fused.holds(group["params"], params):
            # give the old buckets up first: their buffers would count as tensors sharing the storage
            self._fused.pop(id(group), None)
            fused = None
            reason = _fused.ineligible(group["params"], params, states, self.rule.group_wide)
            if reason:
                warnings.warn(f'fused="flat": the flat buffers cannot take this param group at this step '
                              f"({reason}); it takes the multi-tensor tier", FlatBuffersWarning, stacklevel=4)
                return None
            fused = self._fused[id(group)] = _fused.FusedGroup(group["params"], params, states, self.rule)
        fused.load(params, grads)
        return fused

    def _kernel_step(self, group, params, grads, states, grad_scale, found_inf):
        """The default tier: every part of the group (one device and dtype) for which the rule has a
        single-pass kernel takes it, over the user's own tensors: one call over address tables
        (:meth:`_table_step`: the rule's Triton kernel on CUDA, its C kernel on CPU), else torch's
        fused kernel where torch has one (:mod:`torchopt_zoo.tiers.torch_fused`). Returns the
        parameters, gradients and states left for the multi-tensor tier."""
        # the group's tables hold device step counters that this step may leave behind (a frozen
        # tensor steps no more): the steady state is taken again only by tables built from now on
        self._group_tables.pop(id(group), None)
        parts = _fused.partition(params, list(zip(grads, states)))
        if self.rule.group_wide and len(parts) > 1:  # its state spans the group: one kernel or none
            return params, grads, states
        rest = ([], [], [])
        for ps, companions in parts:
            gs, ss = [c[0] for c in companions], [c[1] for c in companions]
            if self._table_step(group, ps, gs, ss, grad_scale, found_inf):
                continue
            run = _torch_fused.kernel(self.rule, group, ps, gs, [s["step"] for s in ss])
            if run is None:
                for out, part in zip(rest, (ps, gs, ss)):
                    out += part
            else:
                _torch_fused.step(run, group, ps, gs, ss, grad_scale, found_inf)
        return rest

    def _table_fast(self, group, grad_scale, found_inf) -> bool:
        """The default tier's steady state, before any per-parameter Python work: the group's
        address table still holds its parameters, state and (new) gradients
        (:meth:`~torchopt_zoo.tiers.table.AddressTable.holds`); one call. False where not taken."""
        bucket = self._group_tables.get(id(group))
        if bucket is None or torch.compiler.is_compiling() or not bucket.holds(group["params"], self.state):
            return False
        return bucket.step(self.rule, group, self._shared_state(group), grad_scale, found_inf)

    def _table_step(self, group, params, grads, states, grad_scale, found_inf) -> bool:
        """One call of the rule's kernel over address tables: its Triton kernel where Triton runs
        for the parameters' device and dtype (:class:`~torchopt_zoo.tiers.table.TableBucket`), its
        C kernel on CPU (:class:`~torchopt_zoo.tiers.cpu.CpuTable`); False where neither takes them."""
        first = params[0]
        key = (id(group), first.device, first.dtype)
        bucket = self._tables.get(key)
        if bucket is None or not bucket.matches(params, states):
            self._tables.pop(key, None)
            if self.rule.launches is not None and _fused.use_triton(first.device, first.dtype):
                bucket = _table.TableBucket.build(self.rule, params, states)
            else:
                bucket = _cpu.CpuTable.build(self.rule, group, params, states)
            if bucket is None:
                return False
            self._tables[key] = bucket
        if not bucket.load(grads):
            return False
        if not bucket.step(self.rule, group, self._shared_state(group), grad_scale, found_inf):
            return False
        if len(params) == len(group["params"]):  # the whole group: the next step tries it first
            self._group_tables[id(group)] = bucket
        return True

    def _fused_fast(self, group, grad_scale, found_inf) -> bool:
        """The fused step on the O(1) path, where nothing changed since the last step; False if not taken."""
        fused = self._fused.get(id(group))
        if fused is None or not fused.intact(group["params"]):
            return False
        self._fused_step(group, fused, grad_scale, found_inf)
        return True

    def _fused_step(self, group, fused, grad_scale, found_inf) -> None:
        def prepare(params, grads):
            return self._prepare(group, params, grads, "foreach", as_float("lr", group["lr"]), grad_scale)[1]

        def direction(rule_fn, params, grads, states, steps):
            return self._direction(rule_fn, group, params, grads, states, steps)

        for bucket in fused.buckets:
            bucket.step(self.rule, group, self._shared_state(group), grad_scale, found_inf, prepare, direction)

    def _direction(self, rule_fn, group, params, grads, states, steps, sharded=None) -> _direction.Direction:
        if self.rule.group_wide:
            shared = self._shared_state(group)
            if sharded is not None:  # the rule sums its statistic over the shards
                shared = {**shared, _sharding.SUM_OVER_SHARDS: _sharding.sum_over_shards(sharded)}
            return rule_fn(group, params, grads, states, steps, shared)
        return rule_fn(group, params, grads, states, steps)

    def _on_device(self, group, tier) -> bool:
        """Whether the list step keeps step counts, bias corrections and ``lr`` as tensors (no host
        read): under ``torch.compile`` (no graph break, no recompile per step) and with
        ``capturable=True`` (CUDA graphs). Every rule's multi-tensor math takes ``steps`` as floats
        or as 0-dim tensors (:func:`~.direction.per_step`)."""
        return tier == "foreach" and (group["capturable"] or torch.compiler.is_compiling())

    def _step_counts(self, states, tier, on_device=False) -> list:
        """Advance every ``step`` by one; the counts as floats (one host read per device), or where
        ``on_device`` the step tensors themselves (the rules take their bias corrections with
        :func:`~.direction.one_minus_pow`)."""
        step_tensors = [s["step"] for s in states]
        if tier == "reference":
            for s in step_tensors:
                s += 1
        elif all(s.is_cpu for s in step_tensors):  # the tensor overload is faster on CPU scalars, as in torch.optim
            torch._foreach_add_(step_tensors, torch.ones((), dtype=step_tensors[0].dtype), alpha=1.0)
        else:
            torch._foreach_add_(step_tensors, 1.0)
        if on_device:
            return step_tensors
        return torch.stack([s.cpu() for s in step_tensors]).tolist()

    def _list_direction(self, group, tier, params, grads, states, grad_scale=None, sharded=None):
        """Count the step, prepare the gradients and run the group's rule over tensor lists; returns
        the real parameters, their prepared gradients, the direction and the step size to apply.
        ``sharded``: a DTensor of the group, whose local shards the lists hold."""
        on_device = self._on_device(group, tier)
        steps = self._step_counts(states, tier, on_device)
        if any(p.is_complex() for p in params):
            params = [_direction.real_view(p) for p in params]
            grads = [_direction.real_view(g) for g in grads]
        lr = group["lr"] if on_device else as_float("lr", group["lr"])
        params, grads = self._prepare(group, params, grads, tier, lr, grad_scale)
        rule_fn = self.rule.reference if tier == "reference" else self.rule.foreach
        return params, grads, self._direction(rule_fn, group, params, grads, states, steps, sharded), lr

    # ----------------------------------------------------------------- gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``torch.optim.Optimizer.zero_grad``. With ``set_to_none=False`` the gradients of a
        ``fused="flat"`` group become views of its flat gradient buffer, zeroed with one fill, so the
        next backward accumulates straight into the buffer the step reads."""
        if set_to_none or not self._fused:
            return super().zero_grad(set_to_none)
        rest = []
        for group in self.param_groups:
            fused = self._fused.get(id(group))
            if fused is not None and fused.group_list is group["params"]:
                rest += fused.zero_grads()
            else:
                rest += [p.grad for p in group["params"] if p.grad is not None]
        for g in rest:
            if g.grad_fn is not None:
                g.detach_()
            else:
                g.requires_grad_(False)
            g.zero_()

    # ----------------------------------------------------------------- the searched step
    @property
    def line_search_stats(self) -> dict[str, Any]:
        """Counters of the line search: totals over all steps (``steps``, ``function_evals``,
        ``gradient_evals``, ``trials``, ``failures``, ``fallbacks``), ``alpha`` (the last accepted
        step, which the reset policy starts from) and ``last`` (the same for the last step, with
        its ``success`` and ``reason``). The totals and ``alpha`` are saved by ``state_dict()``, in
        the state of the first parameter (so distributed checkpoints, which map state to
        parameters, carry them); ``last`` is this object's last step (torch's ``load_state_dict``
        cannot carry the ``reason`` string: it rebuilds strings in state as iterables)."""
        return {**self._line_search_state(), "last": dict(self.__dict__.get("_last_search", LAST_STEP))}

    def _line_search_state(self) -> dict[str, Any]:
        state = self.state[self.param_groups[0]["params"][0]]
        if "line_search" not in state:
            state["line_search"] = {"alpha": None, **dict.fromkeys(STAT_KEYS, 0)}
        return state["line_search"]

    def _objective(self, loss) -> float:
        """The searched objective at the current parameters: ``+-loss`` (``maximize``) plus
        ``(weight_decay/2) |x|^2`` per group (coupled weight decay is its gradient)."""
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        if self.param_groups[0]["maximize"]:
            value = -value
        for group in self.param_groups:
            if group["weight_decay"]:
                ps = [_direction.real_view(p) for p in _sharding.local(group["params"])]
                value += 0.5 * group["weight_decay"] * _direction.inner(ps, ps, _sharding.reducer(group["params"]))
        return value

    def _searched_step(self, closure):
        """``x <- x + alpha * lr * d`` with ``alpha`` from ``self.line_search`` (docs/algorithms.md,
        "Line search").

        One gradient evaluation (the closure with gradients enabled), then forward-only trials.
        A failed search leaves parameters and state exactly as they were and is reported; a
        direction that is not a descent direction takes the configured fallback."""
        ls = self.line_search
        if closure is None:
            raise RuntimeError(f"{type(self).__name__} with line_search needs a closure: "
                               "optimizer.step(closure), see torchopt_zoo.stepsize.trials")
        if len({g["maximize"] for g in self.param_groups}) > 1:
            raise ValueError("line_search needs the same maximize in every param group")
        stats = self._line_search_state()
        all_params = [p for g in self.param_groups for p in g["params"]]
        devices = {p.device for p in all_params}
        rng = _trials.RngState(devices)
        with torch.enable_grad():
            loss = closure()
        after_gradient = _trials.RngState(devices)
        last = {"alpha": 0.0, "trials": 0, "function_evals": 1, "gradient_evals": 1,
                "success": False, "reason": "", "fallback": False}
        phi0 = self._objective(loss)
        snapshot = _trials.StateSnapshot(self.state, all_params)
        params, x0, moves, grads, lrs = [], [], [], [], []
        sharded = _sharding.first_dtensor(all_params)  # FSDP2: the search runs on the local shards
        reduce = _sharding.reducer(all_params)
        for group in self.param_groups:
            ps, gs, states, sparse = self._collect(group)
            if sparse:
                raise RuntimeError(f"{type(self).__name__} with line_search does not support sparse gradients")
            if not ps:
                continue
            if sharded is not None:
                ps, gs, states = _sharding.localized(ps, gs, states)
            ps, gs, d, lr = self._list_direction(group, self._tier(group), ps, gs, states, sharded=sharded)
            params += ps
            grads += gs
            lrs += [-lr] * len(ps)
            moves += d.materialise(lr)
            x0 += [p.clone() for p in ps]
        if not params:
            raise RuntimeError(f"{type(self).__name__} with line_search: the closure left no gradient; it "
                               "must call backward() when gradients are enabled (torchopt_zoo.stepsize.trials)")
        slope = _direction.inner(grads, moves, reduce)
        if not (math.isfinite(phi0) and math.isfinite(slope)):  # no step: the state as it was
            snapshot.restore()
            last["reason"] = "non-finite phi0" if not math.isfinite(phi0) else "non-finite gradient or direction"
            return self._finish_search(stats, last, loss)
        if not slope < 0 and math.isfinite(phi0):
            last["fallback"] = True
            if ls.fallback == "skip":
                snapshot.restore()
                last.update(success=True, reason="skipped: not a descent direction")
                return self._finish_search(stats, last, loss)
            moves = torch._foreach_mul(grads, lrs)
            slope = _direction.inner(grads, moves, reduce)
            if slope == 0:  # a stationary point: nothing to search
                snapshot.restore()
                last.update(success=True, reason="zero gradient")
                return self._finish_search(stats, last, loss)

        def phi(alpha: float) -> float:
            torch._foreach_copy_(params, x0)
            torch._foreach_add_(params, moves, alpha=alpha)
            rng.restore()
            with _trials.BufferGuard():
                return self._objective(_trials.evaluate_forward(closure))

        norm_sq = _direction.inner(moves, moves, reduce) if ls.criterion.needs_direction_norm else None
        try:
            result = ls.search(phi, phi0, slope, ls.initial_alpha(stats["alpha"]), norm_sq)
        except BaseException:
            torch._foreach_copy_(params, x0)
            snapshot.restore()
            after_gradient.restore()
            raise
        after_gradient.restore()
        last.update(alpha=result.alpha, trials=result.trials, function_evals=1 + result.trials,
                    success=result.success, reason=result.reason)
        if result.success:
            stats["alpha"] = result.alpha  # the parameters are at the accepted (last) trial
        else:
            if result.trials:
                torch._foreach_copy_(params, x0)
                stats["alpha"] = result.alpha  # "warm"/"grow" restart below the failed trials
            snapshot.restore()
        return self._finish_search(stats, last, loss)

    def _finish_search(self, stats, last, loss):
        self._last_search = last
        stats["steps"] += 1
        for key in ("function_evals", "gradient_evals", "trials"):
            stats[key] += last[key]
        stats["fallbacks"] += last["fallback"]
        if not last["success"]:
            stats["failures"] += 1
            message = (f"{type(self).__name__}: line search failed ({last['reason']} after "
                       f"{last['trials']} trials); the step was not taken")
            _trials.report_failure(message, self.line_search.on_failure)
        return loss

    def step(self, closure: Callable[[], Any] | None = None):
        """One optimizer step; returns ``closure()`` (evaluated with gradients enabled) if given.

        With ``line_search`` set, the closure is required and the step is searched (see
        :meth:`_searched_step` and :mod:`torchopt_zoo.stepsize.trials` for the protocol). The step
        runs without autograd unless the optimizer was built with ``differentiable=True`` (as
        torch.optim: the reference tier then records the update for autograd)."""
        with torch.set_grad_enabled(self.defaults.get("differentiable", False)):
            if self.line_search is not None:
                return self._searched_step(closure)
            return self._plain_step(closure)

    def _plain_step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale, found_inf = (None if t is None else t.reshape(())  # AMP's one-element tensors
                                 for t in (getattr(self, "grad_scale", None), getattr(self, "found_inf", None)))
        skip = None  # whether found_inf is set, read once, only if a list tier needs it
        for group in self.param_groups:
            tier = self._tier(group)
            if tier == "flat" and self._fused_fast(group, grad_scale, found_inf):
                continue
            if tier == "fused" and self._table_fast(group, grad_scale, found_inf):
                continue
            params, grads, states, sparse = self._collect(group)
            if sparse:
                self._sparse_step(group, sparse, grad_scale, found_inf)
            if not params:
                continue
            sharded = _sharding.first_dtensor(params)
            if sharded is not None:  # FSDP2: the step on the local shards
                params, grads, states = _sharding.localized(params, grads, states)
                if tier == "flat" or (self.rule.group_wide and tier != "reference"):
                    tier = "foreach"  # one buffer cannot hold shards; a group-wide sum needs its all-reduce
            if tier == "flat":
                fused = self._fused_group(group, params, grads, states)
                if fused is not None:
                    self._fused_step(group, fused, grad_scale, found_inf)
                    continue
                tier = "foreach"
            if tier == "fused":
                params, grads, states = self._kernel_step(group, params, grads, states, grad_scale, found_inf)
                if not params:
                    continue
            if skip is None:
                skip = found_inf is not None and bool(found_inf.item())
            if skip:
                continue
            params, _, d, lr = self._list_direction(group, tier, params, grads, states, grad_scale, sharded)
            TIERS["reference" if tier == "reference" else "foreach"](params, d, lr)
        return loss
