"""Faults and bad input, probed as a user meets them.

The rule: a step that does not happen (skipped, failed, non-finite) leaves the parameters **and**
the state exactly as they were, and the next clean steps make progress; a plain step with a
non-finite gradient does what torch's twin does; every ``state_dict()`` the package offers loads
with ``torch.load(weights_only=True)`` and resumes bitwise; every invalid argument raises a
ValueError or TypeError that names it.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import warnings

import pytest
import torch
from hypothesis import given, strategies as st

import torchopt_zoo as zoo
from torchopt_zoo.batch import AdaptiveBatchSampler, AdaptiveBatchSize, per_sample_gradients
from torchopt_zoo.compression import (EF14, EF21, EF21SGDM, CompressedGD, EControl, EFHookState, Identity, RandK,
                                     TopK)
from torchopt_zoo.schedules import GradNormRecorder, LinearDecay, RefinedSchedule
from torchopt_zoo.stepsize import Backtracking, DescentLemma
from torchopt_zoo.stepsize.trials import LineSearchWarning

COUNTERS = ("line_search", "bregman", "higher_order")  # kept with the first parameter's state


def snapshot(opt):
    """Parameters and the per-parameter state, copied (not the counters a failed step adds to)."""
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    return params, {k: {key: copy.deepcopy(value) for key, value in v.items() if key not in COUNTERS}
                    for k, v in opt.state_dict()["state"].items()}


def assert_same(a, b, close=False):
    """Bitwise equal (NaN where NaN), recursively; ``close``: the same NaN and inf pattern, the
    finite values to float64 rounding (the tiers order their arithmetic differently)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k], close)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, close)
    elif isinstance(a, torch.Tensor) and close:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.nan_to_num(7.25), b.nan_to_num(7.25)) and torch.equal(a.isnan(), b.isnan())
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def quadratic_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    return A, [w, b]


def loss_of(A, params):
    w, b = params
    return 0.5 * (A @ w).square().sum() / 8 + (b - 1).square().sum()


# ------------------------------------------------------------------ plain steps: non-finite gradients
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("tier", [{"foreach": False}, {"foreach": True}, {}], ids=["reference", "foreach", "fused"])
def test_plain_step_with_a_non_finite_gradient_matches_the_reference(config, tier, bad):
    """Every tier leaves what the reference math leaves (NaN where it puts NaN), and a twin what
    torch leaves: a plain step does not hide a non-finite gradient, as in torch."""
    cls, kw = config
    runs = []
    for options in ({"foreach": False}, tier):
        A, params = quadratic_problem()
        opt = cls(params, lr=1e-2, **kw, **options)
        for step in range(3):
            opt.zero_grad()
            loss_of(A, params).backward()
            if step == 1:
                params[0].grad[2] = bad
            opt.step()
        runs.append(snapshot(opt))
    assert_same(runs[0], runs[1], close=True)


@pytest.mark.parametrize("cls", [c for c in zoo.OPTIMIZERS if c.twin is not None], ids=lambda c: c.__name__)
def test_plain_step_with_a_nan_gradient_matches_torch(cls):
    runs = []
    for make in (cls, cls.twin):
        A, params = quadratic_problem()
        opt = make(params, lr=1e-2)
        for step in range(3):
            opt.zero_grad()
            loss_of(A, params).backward()
            if step == 1:
                params[0].grad[2] = math.nan
            opt.step()
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, equal_nan=True)


def test_amp_found_inf_skips_the_step_on_the_fused_tier(config):
    """AMP's ``found_inf`` set: parameters and state exactly as before, on the device (no host read)."""
    cls, kw = config
    A, params = quadratic_problem()
    opt = cls(params, lr=1e-2, **kw)
    for found in (0.0, 1.0):
        opt.zero_grad()
        loss_of(A, params).backward()
        before = snapshot(opt)
        opt.grad_scale, opt.found_inf = torch.ones(()), torch.tensor(found)
        opt.step()
    assert_same(before, snapshot(opt))


# ------------------------------------------------------------------ searched steps
FAULTS = ["nan_grad", "inf_grad", "nan_loss", "inf_loss", "raise_in_gradient", "raise_in_trial", "nan_first_trial"]


def searched_closure(opt, A, params, fault):
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if fault == "raise_in_gradient" and torch.is_grad_enabled():
            raise KeyError("the data loader failed")
        if fault == "raise_in_trial" and not torch.is_grad_enabled():
            raise KeyError("the data loader failed")
        loss = loss_of(A, params)
        if fault == "nan_loss":
            loss = loss * math.nan
        if fault == "inf_loss":
            loss = loss * math.inf
        if fault == "nan_first_trial" and calls["n"] == 2:
            loss = loss * math.nan
        if torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
            if fault in ("nan_grad", "inf_grad"):
                params[0].grad[1] = math.nan if fault == "nan_grad" else math.inf
        return loss
    return closure


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("fallback", ["gradient", "skip"])
@pytest.mark.parametrize("cls", zoo.OPTIMIZERS, ids=lambda c: c.__name__)
def test_searched_step_fault_restores_or_steps_finitely_then_progresses(cls, fallback, fault):
    A, params = quadratic_problem()
    opt = cls(params, lr=0.1, weight_decay=0.0, line_search=Backtracking(fallback=fallback, on_failure="warn"))
    clean = searched_closure(opt, A, params, None)
    for _ in range(2):
        opt.step(clean)
    before = snapshot(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LineSearchWarning)
        if fault.startswith("raise"):
            with pytest.raises(KeyError):
                opt.step(searched_closure(opt, A, params, fault))
        else:
            opt.step(searched_closure(opt, A, params, fault))
    if fault == "nan_first_trial":  # the search backtracks past the NaN trial: a finite step
        assert all(torch.isfinite(p).all() for p in params)
        assert loss_of(A, params) <= loss_of(A, before[0]) + 1e-12
    else:
        assert_same(before, snapshot(opt))
    start = float(loss_of(A, params))
    for _ in range(5):
        opt.step(clean)
    assert float(loss_of(A, params)) < start


def test_skip_fallback_after_a_nan_gradient_does_not_stall():
    """The NaN moments never enter the state, so the next clean steps move."""
    A, params = quadratic_problem()
    opt = zoo.Adam(params, lr=0.1, line_search=Backtracking(fallback="skip"))
    opt.step(searched_closure(opt, A, params, "nan_grad"))
    start = float(loss_of(A, params))
    for _ in range(20):
        opt.step(searched_closure(opt, A, params, None))
    assert float(loss_of(A, params)) < 0.5 * start
    assert opt.line_search_stats["fallbacks"] == 0


def test_a_closure_without_backward_under_line_search_says_so():
    A, params = quadratic_problem()
    opt = zoo.Adam(params, line_search=Backtracking())
    with pytest.raises(RuntimeError, match="must call backward"):
        opt.step(lambda: loss_of(A, params))


def test_line_search_warning_points_at_the_step_call():
    A, params = quadratic_problem()
    opt = zoo.Adam(params, line_search=Backtracking(max_trials=1))
    with pytest.warns(LineSearchWarning) as caught:
        opt.step(searched_closure(opt, A, params, "nan_first_trial"))
    assert caught[0].filename == __file__


# ------------------------------------------------------------------ accelerated methods
def accelerated_closure(opt, params, loss_fn, fault=None, backward=True):
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if fault == "raise" and calls["n"] > 1:
            raise KeyError("the data loader failed")
        loss = loss_fn(params)
        if fault == "nan":
            loss = loss * math.nan
        if backward and torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


def mlp_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    return list(model.parameters()), lambda ps: (model(x) - y).square().mean()


LOSSES = {
    "w**2": lambda: ([torch.randn(5, dtype=torch.float64, requires_grad=True)], lambda ps: (ps[0] ** 2).sum()),
    "p**4": lambda: ([torch.randn(5, dtype=torch.float64, requires_grad=True)], lambda ps: (ps[0] ** 4).sum()),
    "mlp": mlp_loss,
}
ACCELERATED = {
    "bregman": (lambda ps: zoo.BregmanAccelerated(ps, L=0.1, line_search=Backtracking(DescentLemma())), True),
    "higher_order": (lambda ps: zoo.HigherOrderAccelerated(ps, M=0.1, line_search=Backtracking(DescentLemma())),
                     False),
}


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("method", ACCELERATED)
def test_accelerated_line_search_on_losses_that_save_the_parameter(method, loss):
    params, loss_fn = LOSSES[loss]()
    make, backward = ACCELERATED[method]
    opt = make(params)
    start = float(loss_fn(params))
    for _ in range(5):
        opt.step(accelerated_closure(opt, params, loss_fn, backward=backward))
    assert float(loss_fn(params)) < start


@pytest.mark.parametrize("fault", ["nan", "raise"])
@pytest.mark.parametrize("method", ACCELERATED)
def test_accelerated_fault_restores_parameters_and_state(method, fault):
    params, loss_fn = LOSSES["mlp"]()
    make, backward = ACCELERATED[method]
    opt = make(params)
    opt.step(accelerated_closure(opt, params, loss_fn, backward=backward))
    before = snapshot(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LineSearchWarning)
        if fault == "raise":
            with pytest.raises(KeyError):
                opt.step(accelerated_closure(opt, params, loss_fn, fault, backward))
        else:
            opt.step(accelerated_closure(opt, params, loss_fn, fault, backward))
    assert_same(before, snapshot(opt))


def test_accelerated_complex_parameters_match_their_real_views():
    c = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    r = torch.view_as_real(c).detach().clone().requires_grad_()
    oc, orr = zoo.HigherOrderAccelerated([c]), zoo.HigherOrderAccelerated([r])
    for _ in range(5):
        oc.step(lambda: (c.abs() ** 2).sum())
        orr.step(lambda: (r ** 2).sum())
    torch.testing.assert_close(torch.view_as_real(c.detach()), r.detach(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ state_dict: weights_only, bitwise resume
def through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resume_case(make, closure_for, steps=3):
    """``make(params)`` runs ``steps``, is saved and rebuilt; both continue 3 steps identically."""
    A, params = quadratic_problem()
    opt = make(params)
    for _ in range(steps):
        opt.step(closure_for(opt, A, params))
    saved = through_disk(opt.state_dict())
    A2, params2 = quadratic_problem()
    with torch.no_grad():
        for p, q in zip(params2, params):
            p.copy_(q)
    again = make(params2)
    again.load_state_dict(saved)
    for _ in range(3):
        opt.step(closure_for(opt, A, params))
        again.step(closure_for(again, A2, params2))
    assert_same([p.detach() for p in params], [p.detach() for p in params2])


def plain_closure(opt, A, params):
    def closure():
        opt.zero_grad()
        loss = loss_of(A, params)
        loss.backward()
        return loss
    return closure


def test_every_optimizer_state_dict_loads_weights_only_and_resumes_bitwise(config):
    cls, kw = config
    resume_case(lambda ps: cls(ps, lr=1e-2, **kw), plain_closure)


@pytest.mark.parametrize("cls", zoo.OPTIMIZERS, ids=lambda c: c.__name__)
def test_searched_state_dict_loads_weights_only_and_resumes_bitwise(cls):
    resume_case(lambda ps: cls(ps, lr=0.1, weight_decay=0.0, line_search=Backtracking()),
                lambda opt, A, ps: searched_closure(opt, A, ps, None))


@pytest.mark.parametrize("method", ["bregman", "higher_order"])
def test_accelerated_state_dict_loads_weights_only_and_resumes_bitwise(method):
    make = {"bregman": lambda ps: zoo.BregmanAccelerated(ps, L=10.0),
            "higher_order": lambda ps: zoo.HigherOrderAccelerated(ps, M=1.0)}[method]
    backward = method == "bregman"
    resume_case(make, lambda opt, A, ps: accelerated_closure(opt, ps, lambda q: loss_of(A, q), backward=backward))


def test_schedule_state_dicts_load_weights_only():
    A, params = quadratic_problem()
    for make in (lambda o: LinearDecay(o, total_steps=10, warmup_steps=2),
                 lambda o: RefinedSchedule(o, grad_norms=[1.0 + i % 3 for i in range(20)])):
        opt = zoo.GD(params, lr=0.1)
        sched = make(opt)
        for _ in range(4):
            sched.step()
        state = through_disk(sched.state_dict())
        again = make(zoo.GD(params, lr=0.1))
        again.load_state_dict(state)
        assert again.get_last_lr() == sched.get_last_lr()


def test_refined_schedule_warns_once_past_its_end():
    opt = zoo.GD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = RefinedSchedule(opt, grad_norms=[1.0] * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the usual loop, opt.step() then sched.step(), over its 8 steps
        for _ in range(8):
            opt.step()
            sched.step()
    with pytest.warns(UserWarning, match="past the schedule") as caught:
        for _ in range(4):
            opt.step()
            sched.step()
    assert len([w for w in caught if "past the schedule" in str(w.message)]) == 1
    assert opt.param_groups[0]["lr"] == 0.0


def test_adaptive_batch_sampler_resumes_mid_epoch():
    sampler = AdaptiveBatchSampler(100, AdaptiveBatchSize("norm", initial=8, max=64), seed=3)
    batches = iter(sampler)
    for _ in range(4):
        next(batches)
    saved = through_disk(sampler.state_dict())
    expected = next(batches)
    rebuilt = AdaptiveBatchSampler(100, AdaptiveBatchSize("norm", initial=8, max=64), seed=3)
    rebuilt.load_state_dict(saved)
    assert next(iter(rebuilt)) == expected


def test_adadagrad_one_sample_batch_and_bounded_history():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(33, 4), torch.randint(0, 2, (33,))
    loss_fn = torch.nn.functional.cross_entropy
    opt = zoo.AdAdaGrad(model.parameters(), lr=0.05, test="inner_product", theta=0.5,
                        initial_batch_size=16, max_batch_size=32)
    for epoch in range(3):
        for idx in opt.sampler(len(x), seed=epoch):  # 33 samples: the epoch ends in one sample
            opt.zero_grad()
            _, G = per_sample_gradients(model, loss_fn, x[idx], y[idx])
            opt.step(per_sample_grads=G)
    assert len(opt.batch.history) <= 1 + (32 - 16)
    state = through_disk(opt.state_dict())
    assert state["state"][0]["batch"]["history"] == opt.batch.history  # with the first parameter's state


def test_adadagrad_errors_name_the_constructor_arguments():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="initial_batch_size"):
        zoo.AdAdaGrad(p, initial_batch_size=1)
    with pytest.raises(ValueError, match="max_batch_size"):
        zoo.AdAdaGrad(p, initial_batch_size=64, max_batch_size=32)
    opt = zoo.AdAdaGrad(p)
    p[0].grad = torch.ones(2)
    before = p[0].detach().clone()
    with pytest.raises(ValueError, match="per_sample_grads"):
        opt.step(per_sample_grads=torch.ones(2))
    assert torch.equal(p[0].detach(), before)  # refused before the step


def test_ef21_state_dict_loads_weights_only_and_resumes_bitwise():
    def worker_grads(A, params):
        grads = torch.autograd.grad(loss_of(A, params), params)
        return [[g * (1 + i) for g in grads] for i in range(2)]

    resume_case(lambda ps: EF21(ps, n_workers=2, compressor=TopK(k=2), lr=0.1),
                lambda opt, A, ps: worker_grads(A, ps))


# ------------------------------------------------------------------ invalid arguments
NUMBER_BAD = st.sampled_from([math.nan, -math.inf, "0.1", [0.1], torch.tensor([1.0, 2.0]), object()])
FLAG_BAD = st.sampled_from(["yes", 2, torch.tensor([True, False]), [True]])


def constructor_arguments(cls):
    """``(name, default)`` of the constructor's number and flag arguments."""
    out = []
    for name, param in inspect.signature(cls).parameters.items():
        default = param.default
        if name in ("params", "line_search", "foreach", "fused"):
            continue
        if isinstance(default, bool) or (isinstance(default, (int, float)) and not isinstance(default, bool)):
            out.append((name, default))
    return out


def a_param():
    return [torch.zeros(2, requires_grad=True)]


def an_optimizer():
    return zoo.GD(a_param(), lr=0.1)


# every other public constructor: valid values of its required arguments; each of its number and
# flag arguments (these and those with a default) is then made invalid in turn
PUBLIC = {
    zoo.BregmanAccelerated: lambda: {"params": a_param()},
    zoo.HigherOrderAccelerated: lambda: {"params": a_param()},
    zoo.AdAdaGrad: lambda: {"params": a_param()},
    zoo.AdAdaGradNorm: lambda: {"params": a_param()},
    AdaptiveBatchSize: dict,
    AdaptiveBatchSampler: lambda: {"n": 10, "controller": AdaptiveBatchSize()},
    LinearDecay: lambda: {"optimizer": an_optimizer(), "total_steps": 10},
    RefinedSchedule: lambda: {"optimizer": an_optimizer(), "grad_norms": [1.0] * 10},
    GradNormRecorder: lambda: {"optimizer": an_optimizer()},
    zoo.Armijo: dict,
    Backtracking: dict,
    TopK: lambda: {"k": 1},
    RandK: lambda: {"k": 1},
    Identity: dict,
    EFHookState: lambda: {"compressor": TopK(k=1)},
    **{cls: (lambda: {"params": a_param(), "n_workers": 2, "compressor": TopK(k=1), "lr": 0.1})
       for cls in (CompressedGD, EF14, EF21, EF21SGDM, EControl)},
}


def public_arguments(cls, base):
    """``(name, example)`` of the number and flag arguments of a public constructor."""
    out = []
    for name, param in inspect.signature(cls).parameters.items():
        value = base.get(name, param.default)
        if name in ("params", "foreach", "fused") or value is None:
            continue
        if isinstance(value, bool) or isinstance(value, (int, float)):
            out.append((name, value))
    return out


CASES = [(cls, dict, name, default) for cls in zoo.OPTIMIZERS for name, default in constructor_arguments(cls)]
CASES += [(cls, base, name, value) for cls, base in PUBLIC.items() for name, value in public_arguments(cls, base())]


@pytest.mark.parametrize("cls,base,name,default", CASES, ids=[f"{c.__name__}-{n}" for c, _, n, _ in CASES])
@given(data=st.data())
def test_every_invalid_argument_is_refused_by_name(cls, base, name, default, data):
    """Every optimizer's, schedule's, compressor's, line search's and batch controller's number and
    flag arguments: a wrong type or an out-of-domain value raises a ValueError or TypeError that
    names the argument."""
    bad = data.draw(FLAG_BAD if isinstance(default, bool) else NUMBER_BAD)
    kwargs = base()
    if cls in zoo.OPTIMIZERS:
        kwargs["params"] = a_param()
    kwargs[name] = bad
    with pytest.raises((ValueError, TypeError)) as error:
        cls(**kwargs)
    assert name in str(error.value)


def test_bregman_line_search_past_convergence_takes_steps_without_failures():
    """Once the loss underflows to 0 the descent lemma cannot be checked: the step is taken
    unverified instead of failing 30 trials every step (which made each step ~15x slower)."""
    torch.manual_seed(0)
    A = torch.randn(20, 20)
    A = A @ A.T / 20 + torch.eye(20)
    w = torch.randn(20, requires_grad=True)
    opt = zoo.BregmanAccelerated([w], L=1.0, line_search=Backtracking(DescentLemma()))
    closure = accelerated_closure(opt, [w], lambda ps: 0.5 * ps[0] @ A @ ps[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LineSearchWarning)
        for _ in range(400):
            opt.step(closure)
    assert opt.stats["failures"] == 0 and float(closure()) < 1e-30
    assert opt.stats["gradient_evals"] < 2 * 400


@pytest.mark.parametrize("cls", [zoo.Adagrad, zoo.GD], ids=lambda c: c.__name__)
def test_sparse_gradients_under_amp_scaling(cls):
    """GradScaler hands the step ``grad_scale``/``found_inf`` instead of unscaling ``p.grad``: a
    sparse gradient is divided by the scale, and the step skipped where ``found_inf`` is set."""
    runs = []
    for scale, found in ((1.0, 0.0), (8.0, 0.0), (8.0, 1.0)):
        p = torch.nn.Parameter(torch.ones(4, 2))
        opt = cls([p], lr=0.1)
        p.grad = torch.sparse_coo_tensor([[0, 2]], torch.tensor([[1.0, 2.0], [3.0, 4.0]]) * scale, (4, 2))
        opt.grad_scale, opt.found_inf = torch.tensor(scale), torch.tensor(found)
        opt.step()
        runs.append(p.detach().clone())
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], torch.ones(4, 2))
