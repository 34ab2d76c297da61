"""Accelerated methods from the Bregman Lagrangian (docs/algorithms.md, "Accelerated methods").

Wibisono, Wilson & Jordan, "A Variational Perspective on Accelerated Methods in Optimization"
(arXiv:1603.04245); Wilson, Recht & Jordan, "A Lyapunov Analysis of Momentum Methods"
(arXiv:1611.02635). The discrete methods keep three sequences: ``z`` (the mirror/dual sequence),
``x`` (where gradients are taken) and ``y`` (the iterate that carries the guarantee); after
``step(closure)`` the parameters hold ``y``.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Callable

import torch
from torch import Tensor

from .._pickling import PicklesAttributes
from .._validation import check_choice, check_int, check_range
from ..tiers import flat as _fused
from ..core import sharding as _sharding
from ..core.direction import inner
from ..stepsize import trials as _trials
from ..stepsize.backtracking import Backtracking
from ..stepsize.criteria import DescentLemma

MIRRORS = ("euclidean", "entropy")


def _rising(start: int, count: int) -> float:
    """``start (start+1) ... (start+count-1)`` (1 for ``count = 0``)."""
    out = 1.0
    for i in range(count):
        out *= start + i
    return out


class _SingleGroup(PicklesAttributes, torch.optim.Optimizer):
    """Shared plumbing: one param group, a closure, and the method's scalar state under a string
    key in the state of the first parameter (saved by ``state_dict()`` like any state, and mapped
    to that parameter by distributed checkpoints). The state is made at construction
    (:meth:`_init_state`), so ``torch.distributed.checkpoint``'s template holds every key without
    calling ``step()`` (which needs a closure); the sequences start from the parameters as they
    are at the first step."""

    _state_key = ""
    _pickled = ("line_search",)

    def __init__(self, params, defaults) -> None:
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group (the method is "
                             "defined on the whole parameter vector)")
        self._init_state(self.param_groups[0])

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        legacy = self.state.pop(self._state_key, None)  # where older versions kept the scalars
        if isinstance(legacy, dict):
            self.state[self._params[0]][self._state_key] = legacy

    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _scalars(self, **initial) -> dict:
        return self.state[self._params[0]].setdefault(self._state_key, dict(initial))

    @property
    def stats(self) -> dict:
        return dict(self.state.get(self._params[0], {}).get(self._state_key, {}))

    def _init_state(self, group) -> dict:
        raise NotImplementedError

    def _gradient(self, closure, copy: bool = True) -> tuple[Tensor, list[Tensor]]:
        """``closure()`` with gradients enabled at the current parameters; the grads, copied
        (``copy=False``: ``p.grad`` itself, for the caller to copy before the next closure call)."""
        with torch.enable_grad():
            loss = closure()
        grads = []
        for p in self._params:
            if p.grad is None:
                raise RuntimeError(f"{type(self).__name__}: the closure left no gradient for a "
                                   "parameter; it must call backward() when gradients are enabled")
            grads.append(p.grad.detach().clone() if copy else p.grad.detach())
        return loss, grads

    def _start(self, closure):
        """The group, after checking that a closure was given."""
        if closure is None:
            raise RuntimeError(f"{type(self).__name__} needs a closure: step(closure)")
        return self.param_groups[0]

    def _fail(self, ys: list[Tensor], s: dict, what: str, trials: int) -> None:
        """A failed search: parameters back at ``y``, the failure counted and reported."""
        self._set(ys)
        s["failures"] += 1
        message = f"{type(self).__name__}: {what} failed after {trials} trials"
        _trials.report_failure(message, self.line_search.on_failure)

    def _set(self, values: list[Tensor]) -> None:
        torch._foreach_copy_(_sharding.local(self._params), _sharding.local(values))

    def _guarded(self, step, closure):
        """Run ``step(closure)``; if it raises (a closure that raises, an interrupted search), the
        parameters go back to ``y`` and the scalar state to what it was, then the error propagates."""
        saved = copy.deepcopy(self.stats)
        try:
            return step(closure)
        except BaseException:
            ys = [self.state[p].get("y") for p in self._params]
            if all(y is not None for y in ys):
                self._set(ys)
            self.state[self._params[0]][self._state_key] = saved
            raise


class BregmanAccelerated(_SingleGroup):
    r"""Accelerated gradient descent of order ``p`` from the Bregman Lagrangian.

    Weights ``A_k = C k (k+1) ... (k+p-1) / L``; per step ``a = min(C p (k+1)...(k+p-1) / L,
    (1 + sqrt(1 + 4 L A)) / (2L))`` (the cap keeps ``L a^2 <= A + a``), ``tau = a / (A + a)``, and

    * ``mirror="euclidean"``: ``x = tau z + (1 - tau) y``; ``y = x - grad f(x) / L``;
      ``z = z - a grad f(x)``. Order 2 with ``C = 1/4`` is Nesterov's method, with the certified
      bound ``f(y_k) - f* <= 2 L |x0 - x*|^2 / (k (k+1))``. With gradients only, ``p > 2`` cannot
      beat O(1/k^2): the cap binds.
    * ``mirror="entropy"`` (accelerated exponentiated gradient; parameters on the probability
      simplex along their last dimension): ``log z <- log z - a grad f(x)``, renormalised;
      ``y = (1 - tau) y + tau z``. Bound ``4 L1 log(n) / (k (k+1))`` from the uniform point, ``L1``
      the smoothness in (l1, l-infinity).

    ``L`` is fixed, or, with ``line_search=Backtracking(DescentLemma(), ...)`` (Euclidean only),
    found every step by descent-lemma backtracking on the gradient step (regular or adaptive;
    each trial moves ``x``, so it costs a gradient and a function evaluation). ``restart=True``
    restarts the weights when ``f(y)`` increases (O'Donoghue & Candes, arXiv:1204.3982), at the
    cost of one forward evaluation per step when ``L`` is fixed.

    ``step(closure)`` needs a closure that computes the loss and, when gradients are enabled,
    calls ``backward()`` (see :mod:`torchopt_zoo.stepsize.trials`); it returns ``f(x)``.

    The Euclidean updates are elementwise ops over the tensor lists (``fused=None``, the default,
    or ``False``). The opt-in ``fused="flat"`` moves the parameters, ``z``, ``y`` and a copy of the
    gradient into flat buffers (see :mod:`torchopt_zoo.tiers.flat`; one device and dtype; each
    ``p.data`` becomes a view of the buffer), so a step is four single-pass ops (``x = lerp(y, z,
    tau)``; the gradient copied in; ``x -= g / L``; ``z -= a g``, ``y = x``) whatever the number of
    tensors.
    """

    _state_key = "bregman"

    def __init__(self, params, order: int = 2, C: float = 0.25, L: float = 1.0,
                 mirror: str = "euclidean", line_search: Backtracking | None = None,
                 restart: bool = False, fused: bool | str | None = None) -> None:
        check_int("order", order, 1)
        check_range("C", C, 0.0, low_open=True)
        check_range("L", L, 0.0, low_open=True)
        check_choice("mirror", mirror, MIRRORS)
        check_choice("restart", restart, (True, False))
        check_choice("fused", fused, (None, False, "flat"))
        if fused == "flat" and mirror != "euclidean":
            raise ValueError('fused="flat" needs mirror="euclidean" (the entropic update normalises '
                             "each row, it is not elementwise); leave fused=None")
        if line_search is not None:
            if not isinstance(line_search, Backtracking) or not isinstance(line_search.criterion, DescentLemma):
                raise ValueError("line_search for BregmanAccelerated must be "
                                 "Backtracking(DescentLemma(), ...): it estimates L")
            if mirror != "euclidean":
                raise ValueError('line_search (adaptive L) needs mirror="euclidean"')
        self.line_search = line_search
        super().__init__(params, dict(order=order, C=float(C), L=float(L), mirror=mirror,
                                      restart=restart, fused=fused))

    @property
    def stats(self) -> dict:
        """``k``, ``A``, the current ``L``, ``max_L`` used, and counts of gradient and function
        evaluations, line-search failures and restarts."""
        return super().stats

    def _init_state(self, group, stepping: bool = False) -> dict:
        s = self._scalars(k=0, A=0.0, L=group["L"], max_L=0.0, gradient_evals=0,
                          function_evals=0, failures=0, restarts=0, f_y=None)
        for p in self._params:
            st = self.state[p]
            if "y" in st and s["gradient_evals"]:
                continue  # z and y start from the parameters as they are at the first step
            if group["mirror"] == "entropy":
                if stepping:
                    _check_simplex(_sharding.local([p])[0])
                st["log_z"] = torch.log(p.detach().clamp_min(torch.finfo(p.dtype).tiny))
            else:
                st["z"] = p.detach().clone()
            st["y"] = p.detach().clone()
        return s

    def _vectors(self, group, states):
        """``(params, zs, ys)`` as the Euclidean updates take them: one-element lists of the flat
        buffers where the group takes them (built at the first step, rebuilt after
        ``load_state_dict``), else the tensor lists. O(1) host work while nothing was rebound."""
        params = self._params
        flat = self.__dict__.get("_flat")
        fused = group.get("fused")  # absent from the param groups of older checkpoints
        if fused == "flat" and (flat is None or not (
                params is self._flat_list and flat.views_unchanged() or flat.holds_views(params, states))):
            self._flat = flat = None
            reason = _fused.ineligible(params, params, states, whole_group=True)
            if reason:
                raise ValueError(f'fused="flat": the flat buffers cannot take these parameters: {reason}')
            self._flat = flat = _fused.FlatBucket(params, states)
            self._flat_grad = torch.empty_like(flat.param)
            self._grad_views = [v.view(p.shape) for v, p in zip(self._flat_grad.split(flat.numels), params)]
        if fused != "flat":  # FSDP2's DTensors: their local shards
            return tuple(_sharding.local(v) for v in (params, [st["z"] for st in states], [st["y"] for st in states]))
        self._flat_list = params
        flat.record_views()
        return [flat.param], [flat.flats["z"]], [flat.flats["y"]]

    def _flat_gradient(self, grads: list[Tensor]) -> list[Tensor]:
        """The gradients copied into the flat gradient buffer, in one multi-tensor copy."""
        torch._foreach_copy_(self._grad_views, grads)
        return [self._flat_grad]

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        return self._guarded(self._step, closure)

    def _step(self, closure):
        group = self._start(closure)
        s = self._init_state(group, stepping=True)
        states = [self.state[p] for p in self._params]
        entropy = group["mirror"] == "entropy"
        reduce = _sharding.reducer(self._params)  # FSDP2: inner products summed over the shards
        if entropy:  # FSDP2: each shard holds whole rows, normalised where they are
            if _sharding.splits_last_dim(self._params):
                raise ValueError('mirror="entropy" does not take a DTensor (FSDP2) parameter sharded along its '
                                 "last dimension (a 1-D parameter): it normalises along that dimension")
            states = _sharding.local_states(states)
            ys, zs = [st["y"] for st in states], [st["log_z"].exp() for st in states]
        else:
            params, zs, ys = self._vectors(group, states)
            flat = group.get("fused") == "flat"
        ls = self.line_search
        L = s["L"]
        if ls is not None:  # the reset policy acts on the step 1/L; the constructor's L starts it
            first = s["gradient_evals"] == 0
            L = group["L"] if first or ls.reset == "restart" else 1.0 / ls.initial_alpha(1.0 / L)
        p, C, k, A = group["order"], group["C"], s["k"], s["A"]
        out = {}

        def trial(L):
            """x, the gradient there and y at this L; ``(accepted, violation, f(y))``."""
            a = min(C * p * _rising(k + 1, p - 1) / L, (1 + math.sqrt(1 + 4 * L * A)) / (2 * L))
            tau = a / (A + a)
            if entropy:
                self._set(torch._foreach_add(torch._foreach_mul(zs, tau), torch._foreach_mul(ys, 1 - tau)))
            else:  # x = tau z + (1 - tau) y
                torch._foreach_copy_(params, ys)
                torch._foreach_lerp_(params, zs, tau)
            loss, grads = self._gradient(closure, copy=entropy or not flat)
            grads = _sharding.local(grads)
            s["gradient_evals"] += 1
            s["function_evals"] += 1
            if entropy:
                log_z = torch._foreach_sub([st["log_z"] for st in states], torch._foreach_mul(grads, a))
                log_z = [lz - torch.logsumexp(lz, dim=-1, keepdim=True) for lz in log_z]
                out["log_z"] = log_z
                out["new_y"] = torch._foreach_add(torch._foreach_mul(ys, 1 - tau),
                                                  torch._foreach_mul([lz.exp() for lz in log_z], tau))
                self._set(out["new_y"])
            else:  # y = x - g / L, in the parameters
                if flat:
                    grads = self._flat_gradient(grads)
                torch._foreach_add_(params, grads, alpha=-1.0 / L)
            out.update(L=L, a=a, loss=loss, grads=grads, f_new=None)
            gg = inner(grads, grads, reduce) if ls is not None else 0.0
            if not (math.isfinite(gg) and math.isfinite(float(loss.detach()))):
                return False, math.inf, math.nan  # a non-finite loss or gradient: no step at this L
            finfo = torch.finfo(loss.dtype)
            if gg / (2 * L) <= max(8 * finfo.eps * abs(float(loss.detach())), finfo.tiny):
                # no search, or a decrease (|g|^2 / 2L) below what the loss can resolve (a stationary
                # point, a loss that underflowed to 0): nothing the criterion could verify
                return True, 0.0, math.nan
            out["f_new"] = f_new = _trials.evaluate_forward(closure)
            s["function_evals"] += 1
            return (*ls.criterion.check(float(loss.detach()), f_new, 1.0 / L, -gg, gg), f_new)

        if ls is None:
            trial(L)
        else:
            result = ls.backtrack(trial, L, scale=operator.truediv)
            if not result.success:
                self._fail([st["y"] for st in states], s, "descent-lemma search", result.trials)
                return out["loss"]
        L, a, loss, grads, f_new = out["L"], out["a"], out["loss"], out["grads"], out["f_new"]
        if entropy:
            log_z, new_y = out["log_z"], out["new_y"]
        s["A"], s["k"], s["L"], s["max_L"] = A + a, k + 1, L, max(s["max_L"], L)
        if entropy:
            for st, lz in zip(states, log_z):
                st["log_z"].copy_(lz)
            torch._foreach_copy_(ys, new_y)
        else:
            torch._foreach_add_(zs, grads, alpha=-a)
            torch._foreach_copy_(ys, params)
        if group["restart"]:
            if f_new is None:
                f_new = _trials.evaluate_forward(closure)
                s["function_evals"] += 1
            if s["f_y"] is not None and f_new > s["f_y"]:
                s["A"], s["k"] = 0.0, 0
                s["restarts"] += 1
                for st in states:
                    if entropy:
                        st["log_z"].copy_(torch.log(st["y"].clamp_min(torch.finfo(st["y"].dtype).tiny)))
                    else:
                        st["z"].copy_(st["y"])
            s["f_y"] = f_new
        return loss


def _check_simplex(p: Tensor) -> None:
    sums = p.detach().sum(dim=-1)
    if bool((p < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-6, rtol=0):
        raise ValueError('mirror="entropy" needs parameters on the probability simplex (entries '
                         ">= 0 summing to 1 along the last dimension); got sums in "
                         f"[{float(sums.min()):.3g}, {float(sums.max()):.3g}] and min entry "
                         f"{float(p.min()):.3g}")


class HigherOrderAccelerated(_SingleGroup):
    r"""Accelerated cubic-regularised Newton (order 3; Nesterov 2008; Wibisono, Wilson & Jordan's
    ``p = 3`` member) with Hessian-vector products from autograd.

    With the mirror map ``h(z) = (2/3) |z - x0|^3`` and its dual ``u = grad h(z)``:
    ``z = x0 + u / sqrt(2 |u|)``, ``x = 3/(k+3) z + k/(k+3) y``,
    ``y = x + s`` with ``s ~ argmin <g, s> + 1/2 <s, H s> + (M/6) |s|^3`` at ``x`` (bisection on
    ``r = |s|`` with conjugate gradients on ``(H + M r / 2) s = -g``), then
    ``u <- u - a grad f(y)`` with ``a = 3 C (k+1)(k+2) / M``. Expect O(1/k^3) on smooth convex
    problems with a Lipschitz Hessian (``M`` at least twice its constant).

    ``line_search=Backtracking(DescentLemma(), ...)`` adapts ``M`` by the violation of the cubic
    model, ``v = (f(y) - f(x) - <g,s> - <s,Hs>/2) / ((M/6)|s|^3)`` (holds iff ``v <= 1``):
    regular ``M <- M / rho``, adaptive ``M <- M min(1/eps, v/rho)``.

    The closure returns the loss and must *not* call ``backward()``: the optimizer differentiates
    it twice (``torch.autograd.grad`` with ``create_graph``), and never writes ``p.grad``.
    """

    _state_key = "higher_order"

    def __init__(self, params, order: int = 3, M: float = 1.0, C: float = 1.0 / 18, *,
                 line_search: Backtracking | None = None, cg_iters: int = 50,
                 cg_tol: float = 1e-10, bisection_iters: int = 40) -> None:
        if isinstance(order, (bool, torch.Tensor)) or order != 3:
            raise ValueError(f"Invalid order: {order!r}; HigherOrderAccelerated implements order 3 "
                             "(use BregmanAccelerated for first-order methods of any order)")
        check_range("M", M, 0.0, low_open=True)
        check_range("C", C, 0.0, low_open=True)
        for name, value in (("cg_iters", cg_iters), ("bisection_iters", bisection_iters)):
            check_int(name, value, 1)
        check_range("cg_tol", cg_tol, 0.0, low_open=True)
        if line_search is not None and (not isinstance(line_search, Backtracking)
                                        or not isinstance(line_search.criterion, DescentLemma)):
            raise ValueError("line_search for HigherOrderAccelerated must be "
                             "Backtracking(DescentLemma(), ...): it adapts M")
        self.line_search = line_search
        super().__init__(params, dict(M=float(M), C=float(C), cg_iters=cg_iters, cg_tol=cg_tol,
                                      bisection_iters=bisection_iters))

    @property
    def stats(self) -> dict:
        """``k``, the current ``M``, and counts of gradient evaluations, Hessian-vector products,
        forward evaluations and failed model checks."""
        return super().stats

    def _init_state(self, group) -> dict:
        s = self._scalars(k=0, M=group["M"], gradient_evals=0, hvps=0, function_evals=0, failures=0)
        for p in self._params:
            st = self.state[p]
            if "y" not in st or not s["gradient_evals"]:  # x0 and y: the parameters at the first step
                st["x0"], st["y"], st["u"] = p.detach().clone(), p.detach().clone(), torch.zeros_like(p)
        return s

    def _loss_and_grad(self, closure, create_graph: bool):
        with torch.enable_grad():
            loss = closure()
            if not isinstance(loss, Tensor) or not loss.requires_grad:
                raise RuntimeError("HigherOrderAccelerated: the closure must return the loss "
                                   "tensor with its graph (and not call backward())")
            try:
                grads = torch.autograd.grad(loss, self._params, create_graph=create_graph)
            except RuntimeError as error:
                raise RuntimeError("HigherOrderAccelerated differentiates the loss itself: write "
                                   "the closure as `return loss_fn(model(x), y)` without "
                                   "backward()") from error
        return loss, grads

    def _cubic_step(self, g, hvp, M, group, s) -> list[Tensor]:
        """Approximate minimiser of ``<g,s> + <s,Hs>/2 + (M/6)|s|^3`` (H positive semidefinite
        along the solution; negative curvature found by CG raises the lower bracket)."""
        gnorm = math.sqrt(inner(g, g))
        if gnorm == 0.0:
            return [torch.zeros_like(t) for t in g]

        def solve(r):  # CG on (H + (M r / 2) I) d = -g; None when it meets negative curvature
            shift = 0.5 * M * r
            d = [torch.zeros_like(t) for t in g]
            res = [-t for t in g]
            p = [t.clone() for t in res]
            rr = inner(res, res)
            for _ in range(group["cg_iters"]):
                Ap = torch._foreach_add(hvp(p), p, alpha=shift)
                s["hvps"] += 1
                pAp = inner(p, Ap)
                if pAp <= 0:
                    return None
                step = rr / pAp
                torch._foreach_add_(d, p, alpha=step)
                torch._foreach_add_(res, Ap, alpha=-step)
                rr_new = inner(res, res)
                if math.sqrt(rr_new) <= group["cg_tol"] * gnorm:
                    break
                p = torch._foreach_add(res, p, alpha=rr_new / rr)
                rr = rr_new
            return d

        lo, hi = 0.0, math.sqrt(2 * gnorm / M)
        best = solve(hi)
        while best is None or math.sqrt(inner(best, best)) > hi:  # widen the bracket
            lo, hi = hi, 2 * hi
            best = solve(hi)
        for _ in range(group["bisection_iters"]):
            mid = 0.5 * (lo + hi)
            d = solve(mid)
            if d is None or math.sqrt(inner(d, d)) > mid:
                lo = mid
            else:
                hi, best = mid, d
            if hi - lo <= 1e-9 * hi:
                break
        return best

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        return self._guarded(self._step, closure)

    def _step(self, closure):
        group = self._start(closure)
        if _sharding.first_dtensor(self._params) is not None:
            raise ValueError("HigherOrderAccelerated does not take DTensor (FSDP2) parameters: its "
                             "Hessian-vector products and cubic subproblem run on whole tensors")
        s = self._init_state(group)
        states = [self.state[p] for p in self._params]
        k, ls = s["k"], self.line_search
        us = [st["u"] for st in states]
        unorm = math.sqrt(inner(us, us))
        zs = [st["x0"] + (u / math.sqrt(2 * unorm) if unorm > 0 else 0) for st, u in zip(states, us)]
        xs = torch._foreach_add(torch._foreach_mul(zs, 3 / (k + 3)),
                                torch._foreach_mul([st["y"] for st in states], k / (k + 3)))
        self._set(xs)
        loss, graph_grads = self._loss_and_grad(closure, create_graph=True)
        s["gradient_evals"] += 1
        s["function_evals"] += 1
        g = [t.detach() for t in graph_grads]
        if ls is not None and not (math.isfinite(float(loss.detach())) and math.isfinite(inner(g, g))):
            self._fail([st["y"] for st in states], s, "cubic model check (non-finite loss or gradient)", 0)
            return loss
        graph = {"grads": graph_grads}  # the graph at x; a trial that moved the parameters spoils it

        def hvp(v):
            if graph["grads"] is None:  # rebuilt at x (autograd refuses a graph whose inputs changed)
                graph["grads"] = self._loss_and_grad(closure, create_graph=True)[1]
                s["gradient_evals"] += 1
                s["function_evals"] += 1
            with torch.enable_grad():
                return [t.detach() for t in torch.autograd.grad(graph["grads"], self._params, v,
                                                                 retain_graph=True)]
        M = s["M"] if ls is None or ls.reset != "restart" else group["M"]
        out = {}

        def trial(M):
            """The cubic step at this M; ``(accepted, violation of the cubic model, f(y))``."""
            step = self._cubic_step(g, hvp, M, group, s)
            out.update(M=M, new_y=torch._foreach_add(xs, step))
            if ls is None:
                return True, 0.0, math.nan
            Hs = hvp(step)  # before the parameters move
            s["hvps"] += 1
            self._set(out["new_y"])
            f_y = _trials.evaluate_forward(closure)
            s["function_evals"] += 1
            self._set(xs)
            graph["grads"] = None
            snorm = math.sqrt(inner(step, step))
            excess = f_y - float(loss.detach()) - inner(g, step) - 0.5 * inner(step, Hs)
            violation = excess / (M / 6 * snorm ** 3) if snorm > 0 and math.isfinite(f_y) else (
                math.inf if not math.isfinite(f_y) else 0.0)
            return violation <= 1.0, violation, f_y

        if ls is None:
            trial(M)
        else:  # M grows by the descent-lemma factor: M * min(1/eps, v/rho) (adaptive)
            result = ls.backtrack(trial, M, scale=operator.truediv)
            if not result.success:
                self._fail([st["y"] for st in states], s, "cubic model check", result.trials)
                return loss
        M, new_y = out["M"], out["new_y"]
        self._set(new_y)
        _, grads_y = self._loss_and_grad(closure, create_graph=False)
        s["gradient_evals"] += 1
        s["function_evals"] += 1
        a = 3 * group["C"] * (k + 1) * (k + 2) / M
        torch._foreach_add_(us, list(grads_y), alpha=-a)
        for st, y in zip(states, new_y):
            st["y"].copy_(y)
        s["k"], s["M"] = k + 1, M
        return loss
