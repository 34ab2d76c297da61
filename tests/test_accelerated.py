"""Bregman-Lagrangian accelerated methods (docs/algorithms.md section 2) against their certified bounds."""

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchopt_zoo as zoo
from torchopt_zoo.stepsize import Armijo, Backtracking, DescentLemma, LineSearchWarning
from torchopt_zoo.testing import closure as make_closure, make_quadratic, quadratics, starts


@given(quadratics(max_condition=1e4), st.data(), st.floats(1.0, 4.0))
def test_order_two_meets_nesterovs_bound_at_every_k(quad, data, over):
    x0 = data.draw(starts(quad))
    x = x0.clone().requires_grad_(True)
    L = over * quad.L  # any L >= lambda_max
    opt = zoo.BregmanAccelerated([x], order=2, C=0.25, L=L)
    closure = make_closure(opt, quad.f, x)
    R2 = float((x0 - quad.x_star) @ (x0 - quad.x_star))
    for k in range(1, 41):
        opt.step(closure)
        bound = 2 * L * R2 / (k * (k + 1))
        assert quad.suboptimality(x.detach()) <= bound * (1 + 1e-9) + 1e-14, k


@given(quadratics(max_condition=1e4), st.data(), st.booleans(),
       st.sampled_from(["restart", "warm", "grow"]), st.floats(1e-3, 10.0))
def test_adaptive_L_meets_the_bound_with_the_largest_L_used(quad, data, adaptive, reset, L0):
    x0 = data.draw(starts(quad))
    x = x0.clone().requires_grad_(True)
    opt = zoo.BregmanAccelerated([x], L=L0 * quad.L, line_search=Backtracking(
        DescentLemma(), adaptive=adaptive, reset=reset, max_trials=200))
    closure = make_closure(opt, quad.f, x)
    R2 = float((x0 - quad.x_star) @ (x0 - quad.x_star))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LineSearchWarning)
        for k in range(1, 31):
            opt.step(closure)
            L_max = opt.stats["max_L"]
            if opt.stats["failures"]:  # only at the rounding floor, where no step can be verified
                assert quad.suboptimality(x.detach()) <= 1e-12 * max(quad.suboptimality(x0), 1.0)
                break
            assert quad.suboptimality(x.detach()) <= 2 * L_max * R2 / (k * (k + 1)) * (1 + 1e-9) + 1e-14


@given(st.integers(2, 12), st.integers(1, 3), st.integers(0, 10_000))
def test_entropic_variant_stays_on_the_simplex_and_meets_its_bound(n, rows, seed):
    gen = torch.Generator().manual_seed(seed)
    quad = make_quadratic(torch.rand(n, generator=gen, dtype=torch.float64) * 10 + 0.01, seed)
    targets = torch.softmax(torch.randn(rows, n, generator=gen, dtype=torch.float64), -1)

    def f(v):  # each row: 1/2 (v - c)^T Q (v - c), minimised at c on the simplex (f* = 0)
        e = v - targets
        return 0.5 * ((e @ quad.Q) * e).sum()
    L1 = float(quad.Q.abs().max())
    x = torch.full((rows, n), 1.0 / n, dtype=torch.float64, requires_grad=True)
    opt = zoo.BregmanAccelerated([x], L=L1, mirror="entropy")
    closure = make_closure(opt, f, x)
    for k in range(1, 41):
        opt.step(closure)
        y = x.detach()
        assert float(y.min()) >= 0 and torch.allclose(y.sum(-1), torch.ones(rows, dtype=torch.float64))
        assert float(f(y)) <= rows * 4 * L1 * math.log(n) / (k * (k + 1)) * (1 + 1e-9)


def test_function_value_restart_is_counted_and_keeps_converging():
    quad = make_quadratic(torch.logspace(-2, 0, 30, dtype=torch.float64), seed=0)
    results = {}
    for restart in (False, True):
        x = torch.zeros(30, dtype=torch.float64, requires_grad=True)
        opt = zoo.BregmanAccelerated([x], L=quad.L, restart=restart)
        closure = make_closure(opt, quad.f, x)
        for _ in range(300):
            opt.step(closure)
        results[restart] = (quad.suboptimality(x.detach()), opt.stats)
    assert results[True][1]["restarts"] >= 1 and results[False][1]["restarts"] == 0
    assert results[True][1]["function_evals"] == 2 * results[True][1]["gradient_evals"]
    # strongly convex: restarting recovers a linear rate that plain acceleration lacks
    assert results[True][0] < 1e-3 * results[False][0]


def test_state_dict_round_trip_continues_identically():
    quad = make_quadratic(torch.logspace(-2, 0, 8, dtype=torch.float64), seed=2)

    def make():
        x = torch.zeros(8, dtype=torch.float64, requires_grad=True)
        opt = zoo.BregmanAccelerated([x], L=0.1, line_search=Backtracking(DescentLemma(), reset="grow"))
        return x, opt, make_closure(opt, quad.f, x)
    x, opt, closure = make()
    for _ in range(7):
        opt.step(closure)
    y, other, other_closure = make()
    with torch.no_grad():
        y.copy_(x)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(5):
        opt.step(closure)
        other.step(other_closure)
    assert torch.equal(x, y) and opt.stats == other.stats


@pytest.mark.parametrize("make, error, match", [
    (lambda p: zoo.BregmanAccelerated(p, order=0), ValueError, r"Invalid order value: 0; allowed range is integers >= 1"),
    (lambda p: zoo.BregmanAccelerated(p, L=0.0), ValueError, r"Invalid L value: 0\.0; allowed range is \(0\.0"),
    (lambda p: zoo.BregmanAccelerated(p, C=-1.0), ValueError, "Invalid C"),
    (lambda p: zoo.BregmanAccelerated(p, mirror="kl"), ValueError, "Invalid mirror"),
    (lambda p: zoo.BregmanAccelerated(p, line_search=Backtracking(Armijo())), ValueError,
     r"Backtracking\(DescentLemma\(\), \.\.\.\)"),
    (lambda p: zoo.BregmanAccelerated(p, mirror="entropy", line_search=Backtracking(DescentLemma())),
     ValueError, 'needs mirror="euclidean"'),
    (lambda p: zoo.BregmanAccelerated([{"params": p}, {"params": [torch.zeros(1, requires_grad=True)]}]),
     ValueError, "one parameter group"),
    (lambda p: zoo.HigherOrderAccelerated(p, M=0), ValueError, "Invalid M"),
    (lambda p: zoo.HigherOrderAccelerated(p, order=4), ValueError, "Invalid order: 4; HigherOrderAccelerated implements order 3"),
    (lambda p: zoo.HigherOrderAccelerated(p, cg_iters=0), ValueError, "Invalid cg_iters"),
])
def test_bad_arguments_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make([torch.zeros(3, requires_grad=True)])


def test_entropy_needs_a_simplex_and_every_method_needs_a_closure():
    x = torch.tensor([0.5, 0.6], requires_grad=True)
    opt = zoo.BregmanAccelerated([x], mirror="entropy")
    with pytest.raises(ValueError, match='mirror="entropy" needs parameters on the probability simplex'):
        opt.step(make_closure(opt, lambda v: (v ** 2).sum(), x))
    with pytest.raises(RuntimeError, match="needs a closure"):
        zoo.BregmanAccelerated([x]).step()
    with pytest.raises(RuntimeError, match="needs a closure"):
        zoo.HigherOrderAccelerated([x]).step()


def logistic_problem(seed=0, n=60, d=5):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(X @ torch.ones(d, dtype=torch.float64))).double()

    def f(w):
        return torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y) + 0.005 * (w @ w)
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    for _ in range(50):  # Newton's method in float64 for f*
        g = torch.autograd.functional.jacobian(f, w.detach())
        H = torch.autograd.functional.hessian(f, w.detach())
        w = (w.detach() - torch.linalg.solve(H, g)).requires_grad_(True)
    return f, float(f(w.detach())), d


def test_higher_order_method_converges_faster_than_order_two_on_logistic_regression():
    f, fstar, d = logistic_problem()
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    ho = zoo.HigherOrderAccelerated([w], M=1.0, C=0.5)
    for _ in range(25):
        ho.step(lambda: f(w))
    ho_gap = float(f(w.detach())) - fstar
    assert w.grad is None  # differentiated with autograd.grad, p.grad never written
    v = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    agd = zoo.BregmanAccelerated([v], L=0.25 * 3.0)  # >= lambda_max(X^T X / n) / 4 + 0.01 here
    closure = make_closure(agd, f, v)
    for _ in range(50):  # as many gradient evaluations as the higher-order method
        agd.step(closure)
    assert ho_gap < 1e-7 and ho_gap < 1e-2 * (float(f(v.detach())) - fstar)


def test_higher_order_on_a_quadratic_with_small_M_is_newton():
    quad = make_quadratic(torch.logspace(-3, 0, 6, dtype=torch.float64), seed=4)
    x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = zoo.HigherOrderAccelerated([x], M=1e-8, cg_iters=20)
    opt.step(lambda: quad.f(x))
    assert quad.suboptimality(x.detach()) <= 1e-6 * quad.suboptimality(torch.zeros(6, dtype=torch.float64))


def test_higher_order_adaptive_M_and_the_closure_rule():
    f, fstar, d = logistic_problem(1)
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = zoo.HigherOrderAccelerated([w], M=1e-3, C=0.5,
                                     line_search=Backtracking(DescentLemma(), reset="grow"))
    for _ in range(20):
        opt.step(lambda: f(w))
    assert float(f(w.detach())) - fstar < 1e-7 and opt.stats["failures"] == 0
    assert opt.stats["M"] > 1e-3  # the model check raised M from a too-small start

    def with_backward():
        loss = f(w)
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="without backward"):
        opt.step(with_backward)


def _split_run(quad, x0, sizes, fused, steps=15, **kw):
    """BregmanAccelerated on ``quad`` with the vector split into tensors of ``sizes``."""
    params = [t.clone().requires_grad_(True) for t in x0.split(sizes)]
    opt = zoo.BregmanAccelerated(params, L=2 * quad.L, fused=fused, **kw)

    def closure():
        opt.zero_grad()
        loss = quad.f(torch.cat(params))
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    for _ in range(steps):
        opt.step(closure)
    return params, opt


@given(quadratics(max_condition=1e3), st.data(), st.sampled_from(["fixed", "search", "restart"]))
def test_flat_buffers_take_the_same_steps_as_the_tensor_lists(quad, data, variant):
    # fused="flat" puts the parameters, z and y in flat buffers (one op per update over all
    # tensors); the default runs the same updates over the tensor lists. Elementwise ops give the
    # same values. The search's inner products are summed in another order, which can flip an
    # acceptance decided at the rounding level: there both runs must meet the certified bound.
    x0 = data.draw(starts(quad))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(x0) - 1), max_size=4)))) if len(x0) > 1 else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(x0)])]
    kw = {"fixed": {}, "search": {"line_search": Backtracking(DescentLemma(), reset="grow")},
          "restart": {"restart": True}}[variant]
    (flat_params, flat), (list_params, lists) = (_split_run(quad, x0, sizes, f, **copy.deepcopy(kw))
                                                 for f in ("flat", None))
    assert lists.__dict__.get("_flat") is None and flat._flat is not None
    base = flat._flat.param
    assert [p.data_ptr() for p in flat_params] == [base.data_ptr() + o * base.element_size()
                                                   for o in flat._flat.offsets]
    assert flat.stats["gradient_evals"] >= 15 and lists.stats["gradient_evals"] >= 15
    if variant == "search":
        R2 = float((x0 - quad.x_star) @ (x0 - quad.x_star))
        for params, opt in ((flat_params, flat), (list_params, lists)):
            x = torch.cat([p.detach() for p in params])
            assert quad.suboptimality(x) <= 2 * opt.stats["max_L"] * R2 / (15 * 16) * (1 + 1e-9) + 1e-14
        return
    for a, b in zip(flat_params, list_params):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert flat.stats == lists.stats


def test_flat_buffers_name_what_they_cannot_take():
    with pytest.raises(ValueError, match='fused="flat" needs mirror="euclidean"'):
        zoo.BregmanAccelerated([torch.full((3,), 1 / 3, requires_grad=True)], mirror="entropy", fused="flat")
    with pytest.raises(ValueError, match="Invalid fused"):
        zoo.BregmanAccelerated([torch.zeros(3, requires_grad=True)], fused="yes")
    x = torch.zeros(4, 3).t().requires_grad_(True)  # not contiguous
    opt = zoo.BregmanAccelerated([x], fused="flat")
    with pytest.raises(ValueError, match='fused="flat": .*not contiguous'):
        opt.step(lambda: x.square().sum())
    opt = zoo.BregmanAccelerated([x])  # the default: the tensor lists, nothing moved
    opt.step(make_closure(opt, lambda v: v.square().sum(), x))
    assert opt.__dict__.get("_flat") is None and opt.stats["k"] == 1
