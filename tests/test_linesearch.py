"""The step-size core (docs/algorithms.md section 1): criteria, backtracking, and the searched step of
every optimizer. References are float64 recomputations of the criterion on random quadratics."""

import copy
import io
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import torchopt_zoo as zoo
from conftest import CONFIGS, config_id
from torchopt_zoo.stepsize import (Armijo, Backtracking, DescentLemma, LineSearchError,
                                   LineSearchWarning, line_search)
from torchopt_zoo.testing import closure as make_closure, quadratics, starts

rhos = st.sampled_from([0.1, 0.3, 0.5, 0.8, 0.9])
cs = st.sampled_from([1e-4, 0.1, 0.3, 0.5])


@st.composite
def descent_problems(draw):
    """A quadratic, a point, a descent direction (a random perturbation of -g) and a first trial
    far enough out that backtracking has work to do."""
    quad = draw(quadratics())
    x = draw(starts(quad))
    g = quad.grad(x)
    assume(float(g.norm()) > 1e-8)
    noise = torch.tensor(draw(st.lists(st.floats(-1, 1), min_size=quad.dim, max_size=quad.dim)),
                         dtype=torch.float64)
    d = -g + draw(st.floats(0.0, 0.9)) * float(g.norm()) * noise / max(float(noise.norm()), 1e-12)
    slope = float(g @ d)
    assume(slope < -1e-12)
    alpha0 = draw(st.floats(1e-2, 1e3)) / quad.L
    return quad, x, d, slope, alpha0


def restriction(quad, x, d):
    calls = []

    def phi(alpha):
        calls.append(alpha)
        return float(quad.f(x + alpha * d))
    return phi, calls


@given(descent_problems(), rhos, cs, st.booleans())
def test_armijo_accepts_only_steps_that_satisfy_it(problem, rho, c, adaptive):
    quad, x, d, slope, alpha0 = problem
    phi, _ = restriction(quad, x, d)
    phi0 = float(quad.f(x))
    res = line_search(phi, phi0, slope, alpha0, Armijo(c), adaptive=adaptive, rho=rho,
                      max_trials=200)
    assert res.success and res.reason == "accepted"
    value = float(quad.f(x + res.alpha * d))  # recomputed, not taken from the search
    assert value == res.value
    assert value <= phi0 + c * res.alpha * slope
    assert value <= phi0  # f never increases on an accepted step


@given(descent_problems(), rhos, cs)
def test_adaptive_never_needs_more_trials_than_regular(problem, rho, c):
    """Cavalcanti, Lessard & Wilson: for convex f, equal rho, c and alpha0."""
    quad, x, d, slope, alpha0 = problem
    phi0 = float(quad.f(x))
    runs = {}
    for adaptive in (False, True):
        phi, _ = restriction(quad, x, d)
        runs[adaptive] = line_search(phi, phi0, slope, alpha0, Armijo(c), adaptive=adaptive,
                                     rho=rho, eps=1e-12, max_trials=500)
    assert runs[False].success and runs[True].success
    assert runs[True].trials <= runs[False].trials


@given(descent_problems(), rhos, st.booleans())
def test_descent_lemma_accepts_only_steps_that_satisfy_it(problem, rho, adaptive):
    quad, x, _, _, alpha0 = problem
    g = quad.grad(x)
    d = -g
    phi, _ = restriction(quad, x, d)
    phi0, slope, nsq = float(quad.f(x)), float(g @ d), float(d @ d)
    res = line_search(phi, phi0, slope, alpha0, DescentLemma(), direction_norm_sq=nsq,
                      adaptive=adaptive, rho=rho, max_trials=200)
    assert res.success
    x_plus = x + res.alpha * d
    excess = float(quad.f(x_plus)) - phi0 - float(g @ (x_plus - x))
    assert excess <= 0.5 / res.alpha * float((x_plus - x) @ (x_plus - x)) * (1 + 1e-12)
    # the accepted 1/alpha never exceeds L / rho (the regular-search bound) by more than rounding
    assert 1 / res.alpha <= quad.L / rho * (1 + 1e-9) or res.alpha == alpha0


@given(descent_problems(), rhos)
def test_descent_lemma_adaptive_never_needs_more_trials(problem, rho):
    quad, x, _, _, alpha0 = problem
    g = quad.grad(x)
    phi0, slope, nsq = float(quad.f(x)), -float(g @ g), float(g @ g)
    trials = {}
    for adaptive in (False, True):
        phi, _ = restriction(quad, x, -g)
        res = line_search(phi, phi0, slope, alpha0, DescentLemma(), direction_norm_sq=nsq,
                          adaptive=adaptive, rho=rho, eps=1e-12, max_trials=500)
        assert res.success
        trials[adaptive] = res.trials
    assert trials[True] <= trials[False]


@given(descent_problems(), st.floats(1e-3, 0.99), st.booleans())
def test_nan_trials_never_stick(problem, frac, adaptive):
    """phi is NaN beyond some alpha: the search treats it as the worst violation and moves on."""
    quad, x, d, slope, alpha0 = problem
    cutoff = frac * alpha0

    def phi(alpha):
        return math.nan if alpha > cutoff else float(quad.f(x + alpha * d))
    res = line_search(phi, float(quad.f(x)), slope, alpha0, Armijo(1e-4), adaptive=adaptive,
                      max_trials=500)
    assert res.success and math.isfinite(res.value) and res.alpha <= cutoff


def test_non_descent_direction_is_never_searched():
    calls = []
    for slope in (0.0, 1.0, math.nan):
        res = line_search(lambda a: calls.append(a) or 0.0, 1.0, slope, 1.0, Armijo())
        assert not res.success and res.reason == "not a descent direction" and res.trials == 0
    assert calls == []


def test_exhausted_trials_report_failure():
    res = line_search(lambda a: math.inf, 0.0, -1.0, 1.0, Armijo(), max_trials=7)
    assert (res.success, res.reason, res.trials) == (False, "max_trials", 7)


def test_adaptive_factor_is_rho_times_the_armijo_boundary_on_a_quadratic():
    # phi(a) = -a + a^2 (slope -1, curvature 2): Armijo boundary a* = 1 - c
    c, rho = 0.25, 0.5
    phi = lambda a: -a + a * a  # noqa: E731
    alphas = []
    res = line_search(lambda a: alphas.append(a) or phi(a), 0.0, -1.0, 4.0, Armijo(c), rho=rho)
    assert res.trials == 2 and alphas[1] == pytest.approx(rho * (1 - c), rel=1e-12)


@pytest.mark.parametrize("make, match", [
    (lambda: Armijo(0.0), r"Invalid c value: 0\.0; allowed range is \(0\.0, 1\.0\)"),
    (lambda: Armijo(1.0), "Invalid c"),
    (lambda: Backtracking(rho=1.0), "Invalid rho"),
    (lambda: Backtracking(eps=0), "Invalid eps"),
    (lambda: Backtracking(max_trials=0), "Invalid max_trials"),
    (lambda: Backtracking(alpha0=-1), "Invalid alpha0"),
    (lambda: Backtracking(reset="sometimes"), "Invalid reset value: 'sometimes'; allowed values"),
    (lambda: Backtracking(gamma=1.0), "Invalid gamma"),
    (lambda: Backtracking(on_failure="ignore"), "Invalid on_failure"),
    (lambda: Backtracking(fallback="uphill"), "Invalid fallback"),
    (lambda: line_search(abs, 0.0, -1.0, 0.0, Armijo()), "Invalid alpha0"),
    (lambda: zoo.AdamW([torch.zeros(2, requires_grad=True)], line_search=Backtracking()),
     "decoupled_weight_decay=True with line_search"),
])
def test_bad_settings_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_line_search_argument_type_is_checked():
    with pytest.raises(TypeError, match="line_search must be None or"):
        zoo.GD([torch.zeros(2, requires_grad=True)], line_search="armijo")
    with pytest.raises(TypeError, match="criterion must be"):
        Backtracking("armijo")


def test_reset_policies():
    assert Backtracking(alpha0=2.0).initial_alpha(0.1) == 2.0
    assert Backtracking(alpha0=2.0, reset="warm").initial_alpha(0.1) == 0.1
    grow = Backtracking(alpha0=2.0, reset="grow", gamma=4.0, alpha_max=1.0)
    assert grow.initial_alpha(None) == 2.0
    assert grow.initial_alpha(0.1) == pytest.approx(0.4) and grow.initial_alpha(0.5) == 1.0


# ---------------------------------------------------------------------------- the searched step
def _decoupled_decay(cls, kw):
    defaults = cls([torch.zeros(1, requires_grad=True)], **kw).defaults
    return defaults["decoupled_weight_decay"] and defaults["weight_decay"] != 0


# decoupled weight decay is refused with a line search (test_bad_settings_name_the_argument)
SEARCHABLE = [c for c in CONFIGS if not _decoupled_decay(*c)]
SEARCHABLE.append((zoo.AdamW, {"weight_decay": 0.0}))


@pytest.mark.parametrize("cfg", SEARCHABLE, ids=config_id)
@given(quad=quadratics(max_condition=100.0), data=st.data(), adaptive=st.booleans())
def test_every_optimizer_searched_never_increases_its_objective(cfg, quad, data, adaptive):
    cls, kw = cfg
    x0 = data.draw(starts(quad))
    x = x0.clone().requires_grad_(True)
    lr = 1.0 / quad.L if cls is zoo.GD else 0.1
    opt = cls([x], lr=lr, line_search=Backtracking(adaptive=adaptive, reset="grow"), **kw)
    # with maximize the closure returns -f: maximising it (less the coupled decay) minimises f + wd |x|^2 / 2
    sign = -1.0 if kw.get("maximize") else 1.0
    wd = kw.get("weight_decay", 0.0)
    objective = lambda v: quad.f(v) + 0.5 * wd * (v @ v)  # noqa: E731
    closure = make_closure(opt, lambda v: sign * quad.f(v), x)
    values = [float(objective(x.detach()))]
    for _ in range(15):
        opt.step(closure)
        values.append(float(objective(x.detach())))
    assert all(b <= a + 1e-12 * abs(a) for a, b in zip(values, values[1:])), values
    stats = opt.line_search_stats
    assert stats["steps"] == 15 and stats["gradient_evals"] == 15
    assert stats["function_evals"] == stats["steps"] + stats["trials"]
    # Along -g a search fails only where rounding hides any decrease (at the minimiser). A
    # momentum or adaptive direction can be a barely-descent one that needs a step below what
    # max_trials reaches: that is a reported failure, and the objective still never increased.
    if stats["failures"] and cls is zoo.GD and not kw.get("momentum"):
        grad_norm = lambda v: float(torch.autograd.functional.jacobian(objective, v).norm())  # noqa: E731
        assert grad_norm(x.detach()) <= 1e-6 * grad_norm(x0)


@given(quad=quadratics(), data=st.data(), adaptive=st.booleans(), c=cs)
def test_gd_steps_satisfy_armijo(quad, data, adaptive, c):
    x = data.draw(starts(quad)).clone().requires_grad_(True)
    opt = zoo.GD([x], lr=1.0, line_search=Backtracking(Armijo(c), adaptive=adaptive,
                                                        reset="grow", max_trials=100))
    closure = make_closure(opt, quad.f, x)
    for _ in range(10):
        before = x.detach().clone()
        g = quad.grad(before)
        opt.step(closure)
        alpha = opt.line_search_stats["last"]["alpha"]
        assert torch.allclose(x.detach(), before - alpha * g, rtol=1e-12, atol=1e-14)
        # the gradient here is Q x - b, the optimizer's is autograd's: they differ by rounding,
        # which matters when a grown step lands exactly on the Armijo boundary
        decrease = c * alpha * float(g @ g)
        slack = 1e-12 * (abs(float(quad.f(before))) + decrease)
        assert float(quad.f(x.detach())) <= float(quad.f(before)) - decrease + slack


def adam_with_state(**ls):
    torch.manual_seed(0)
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = zoo.Adam([x], lr=0.1, line_search=Backtracking(**ls))
    closure = make_closure(opt, lambda v: (v ** 2).sum(), x)
    for _ in range(3):
        opt.step(closure)
    return x, opt


def frozen(opt, x):
    return x.detach().clone(), {k: (v.clone() if torch.is_tensor(v) else v)
                                for k, v in opt.state[x].items()}


def assert_unchanged(opt, x, before):
    """Parameters and state tensors as they were (the line search's counters, kept with the first
    parameter's state, count the failure)."""
    x_before, state_before = before
    assert torch.equal(x.detach(), x_before)
    assert state_before.keys() == opt.state[x].keys()
    for k, v in state_before.items():
        if k != "line_search":
            assert torch.equal(opt.state[x][k], v), k


@pytest.mark.parametrize("on_failure", ["warn", "raise"])
def test_failed_search_leaves_parameters_and_state_as_they_were(on_failure):
    x, opt = adam_with_state(on_failure=on_failure, max_trials=5)
    before = frozen(opt, x)

    def nan_trials():
        loss = (x ** 2).sum()
        if torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
            return loss
        return loss * math.nan
    if on_failure == "warn":
        with pytest.warns(LineSearchWarning, match="max_trials after 5 trials"):
            opt.step(nan_trials)
    else:
        with pytest.raises(LineSearchError, match="line search failed"):
            opt.step(nan_trials)
    assert_unchanged(opt, x, before)
    assert opt.line_search_stats["failures"] == 1
    assert opt.line_search_stats["last"]["function_evals"] == 6


def test_non_finite_loss_at_x_is_a_failure_without_a_step():
    x, opt = adam_with_state()
    before = frozen(opt, x)
    closure = make_closure(opt, lambda v: (v ** 2).sum() * math.inf, x)
    with pytest.warns(LineSearchWarning, match="non-finite phi0"):
        opt.step(closure)
    assert_unchanged(opt, x, before)


def uphill_gd(fallback):
    """Heavy ball whose momentum buffer points uphill: d = -(mu buf + g) with buf = -10 g."""
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = zoo.GD([x], lr=0.1, momentum=0.9, line_search=Backtracking(fallback=fallback))
    closure = make_closure(opt, lambda v: (v ** 2).sum(), x)
    opt.step(closure)
    opt.state[x]["momentum_buffer"].copy_(-10 * 2 * x.detach())
    return x, opt, closure


def test_non_descent_direction_falls_back_to_the_gradient():
    x, opt, closure = uphill_gd("gradient")
    f_before = float((x.detach() ** 2).sum())
    opt.step(closure)
    assert float((x.detach() ** 2).sum()) < f_before
    assert opt.line_search_stats["fallbacks"] == 1 and opt.line_search_stats["last"]["fallback"]


def test_non_descent_direction_can_be_skipped():
    x, opt, closure = uphill_gd("skip")
    x_before = x.detach().clone()
    opt.step(closure)
    assert torch.equal(x.detach(), x_before)
    assert opt.line_search_stats["fallbacks"] == 1 and opt.line_search_stats["failures"] == 0


def test_closure_is_required():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="needs a closure"):
        zoo.GD([x], line_search=Backtracking()).step()


def test_standard_closure_with_backward_fails_with_what_to_write():
    x, opt = adam_with_state()
    before = frozen(opt, x)

    def torch_style():
        opt.zero_grad()
        loss = ((x - 3) ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match=r"if torch.is_grad_enabled\(\)"):
        opt.step(torch_style)
    assert_unchanged(opt, x, before)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.out = torch.nn.Linear(8, 1)

    def hidden(self, x, masks=None):
        """Dropout(0.5) written out, so a test can see its mask."""
        h = torch.relu(self.bn(self.lin(x)))
        mask = torch.rand_like(h) > 0.5
        if masks is not None:
            masks.append(mask)
        return h * mask * 2.0


def net_closure(model, opt, data, masks=None):
    x, y = data

    def closure():
        h = model.hidden(x, masks)
        loss = ((model.out(h) - y) ** 2).mean()
        if torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


def test_trials_see_the_same_dropout_and_leave_rng_and_batchnorm_as_one_forward():
    torch.manual_seed(0)
    data = (torch.randn(16, 4), torch.randn(16, 1))
    model = Net()
    reference = Net()
    reference.load_state_dict(model.state_dict())
    opt = zoo.Adam(model.parameters(), lr=10.0, line_search=Backtracking())  # lr 10: must backtrack
    masks = []
    torch.manual_seed(1)
    opt.step(net_closure(model, opt, data, masks))
    after_step = torch.rand(3)
    assert opt.line_search_stats["last"]["trials"] > 1
    assert all(torch.equal(m, masks[0]) for m in masks[1:])
    # the reference: one plain forward from the same random state
    torch.manual_seed(1)
    with torch.no_grad():
        reference.hidden(data[0])
    assert torch.equal(torch.rand(3), after_step)
    assert torch.equal(model.bn.running_mean, reference.bn.running_mean)
    assert torch.equal(model.bn.running_var, reference.bn.running_var)
    assert int(model.bn.num_batches_tracked) == 1


def io_of(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("reset", ["warm", "grow"])
def test_line_search_state_survives_state_dict(reset):
    def make():
        torch.manual_seed(0)
        x = torch.randn(6, dtype=torch.float64, requires_grad=True)
        opt = zoo.RMSprop([x], lr=1.0, line_search=Backtracking(reset=reset, alpha0=8.0))
        return x, opt, make_closure(opt, lambda v: ((v - 1) ** 4).sum(), x)
    x, opt, closure = make()
    for _ in range(4):
        opt.step(closure)
    saved = opt.state_dict()
    y, other, other_closure = make()
    with torch.no_grad():
        y.copy_(x)
    other.load_state_dict(copy.deepcopy(saved))  # torch keeps loaded tensors as they are
    assert torch.load(io_of(saved), weights_only=True)["state"][0]["line_search"] == saved["state"][0]["line_search"]
    without_last = [{k: v for k, v in o.line_search_stats.items() if k != "last"} for o in (opt, other)]
    assert without_last[0] == without_last[1]  # the totals and alpha: "last" is each object's own last step
    for _ in range(3):
        opt.step(closure)
        other.step(other_closure)
    assert torch.equal(x, y)
    assert other.line_search_stats == opt.line_search_stats


def test_line_search_over_many_groups_and_tensors():
    torch.manual_seed(0)
    ps = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    opt = zoo.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}], lr=0.1,
                   line_search=Backtracking())
    f = lambda: sum(((p - i) ** 2).sum() for i, p in enumerate(ps))  # noqa: E731

    def closure():
        loss = f()
        if torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
        return loss
    values = [float(f())]
    for _ in range(20):
        opt.step(closure)
        values.append(float(f()))
    assert values[-1] < values[0] and all(b <= a for a, b in zip(values, values[1:]))
    assert not opt._fused  # searched steps run over tensor lists


def test_a_search_grown_too_far_recovers_after_one_failure():
    x = torch.tensor([3.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = zoo.GD([x], lr=1.0, line_search=Backtracking(adaptive=False, reset="grow", alpha0=4096.0,
                                                        max_trials=10))
    closure = make_closure(opt, lambda v: (v ** 2).sum(), x)
    with pytest.warns(LineSearchWarning):
        opt.step(closure)  # 10 halvings from 4096 cannot reach an Armijo step (alpha < 1)
    assert torch.equal(x.detach(), torch.tensor([3.0, -1.0], dtype=torch.float64))
    for _ in range(5):
        opt.step(closure)
    assert opt.line_search_stats["failures"] == 1 and float((x.detach() ** 2).sum()) < 1.0
