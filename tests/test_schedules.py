"""Schedules (docs/algorithms.md section 6): linear decay and refinement from gradient norms."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchopt_zoo as zoo
from torchopt_zoo.schedules import GradNormRecorder, LinearDecay, RefinedSchedule, refine

norm_lists = st.lists(st.floats(1e-3, 1e3), min_size=12, max_size=300)


@given(st.integers(2, 400), st.floats(1e-6, 1e6), st.sampled_from([1, 2]), st.floats(0.01, 0.5))
def test_constant_norms_refine_to_linear_decay(T, g, power, tau):
    s = refine(np.full(T, g), tau=tau, power=power)
    np.testing.assert_allclose(s, 1 - np.arange(T) / (T - 1), rtol=0, atol=1e-12)


@given(norm_lists, st.sampled_from([1, 2]))
def test_refined_schedule_is_in_unit_interval_with_peak_one_and_last_zero(norms, power):
    s = refine(norms, power=power)
    assert s.shape == (len(norms),)
    assert s.min() >= 0 and s.max() == 1.0 and s[-1] == 0.0


@given(norm_lists, st.floats(1e-3, 1e3), st.sampled_from([1, 2]))
def test_refinement_is_invariant_to_scaling_the_norms(norms, scale, power):
    np.testing.assert_allclose(refine(np.array(norms) * scale, power=power),
                               refine(norms, power=power), rtol=1e-9, atol=1e-12)


def authors_refinement(G, tau, power):
    """The refined schedule as Defazio et al.'s published code computes it, re-stated in float64
    with scipy's median filter: the end padded with 2w reflected values, the start with the
    nearest; ``s_t = w_t sum_{k > t} w_k``, ``s_{T-1} = 0``, normalised to a peak of 1."""
    ndimage = pytest.importorskip("scipy.ndimage")
    G = np.asarray(G, dtype=np.float64)
    width = 2 * (int(tau * len(G)) // 2) + 1
    pad = 2 * width
    smooth = ndimage.median_filter(np.pad(G, (0, pad), mode="reflect"), size=width, mode="nearest")[:-pad]
    weights = smooth ** -float(power)
    s = np.array([weights[t] * weights[t + 1:].sum() for t in range(len(G))])
    return s / s.max()


@settings(deadline=None)
@given(st.lists(st.floats(1e-2, 1e2), min_size=20, max_size=300), st.sampled_from([1, 2]), st.floats(0.01, 0.5))
def test_refine_is_the_authors_recipe(norms, power, tau):
    np.testing.assert_allclose(refine(norms, tau=tau, power=power), authors_refinement(norms, tau, power),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T, W", [(10, 0), (30, 4), (100, 28)])
def test_linear_decay_is_the_authors_polynomial_schedule(T, W):
    """Defazio et al.'s code: warm-up ``(j+1)/W`` for ``j < W``, then ``1 - (j - W)/(T - W)``
    (ending at ``1/(T-W)``, the peak held at ``j = W - 1`` and ``j = W``)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = LinearDecay(opt, T, warmup_steps=W)
    got = []
    for _ in range(T):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [(j + 1) / W if j < W else 1 - (j - W) / (T - W) for j in range(T)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_falling_norms_produce_a_warmup_and_resampling_keeps_the_shape():
    norms = np.concatenate([np.linspace(20, 1, 30), np.ones(170)])
    s = refine(norms)
    assert 0 < s.argmax() and s[0] < 0.1  # warm-up by itself
    r = refine(norms, total_steps=1000)
    assert r.shape == (1000,) and r.max() == 1.0 and r[-1] == 0.0
    assert abs(r.argmax() / 999 - s.argmax() / 199) < 0.01


def test_median_filter_removes_spikes():
    norms = np.ones(200)
    norms[50] = 1e-6  # one outlier would otherwise put a huge weight on step 50
    np.testing.assert_allclose(refine(norms), 1 - np.arange(200) / 199, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"grad_norms": [1.0, 0.0, 1.0, 1.0]}, r"Invalid grad_norms: entry 1 is 0\.0"),
    ({"grad_norms": [1.0, 2.0, -1.0]}, "entry 2"),
    ({"grad_norms": [1.0, float("nan"), 1.0]}, "entry 1 is nan"),
    ({"grad_norms": [1.0, float("inf"), 1.0]}, "entry 1 is inf"),
    ({"grad_norms": [1.0] * 4, "tau": 1.0}, "fewer than the filter width 5"),
    ({"grad_norms": [1.0]}, "fewer than"),
    ({"grad_norms": [1.0] * 10, "tau": 0.0}, "Invalid tau"),
    ({"grad_norms": [1.0] * 10, "power": 3}, "Invalid power"),
])
def test_refine_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        refine(**kwargs)


def two_groups(lr_type=float):
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": lr_type(0.5)}], lr=lr_type(0.1))


def lrs_of(opt):
    return [float(g["lr"]) for g in opt.param_groups]


def expected_factor(t, T, W, r):
    if t < W:
        return (t + 1) / W
    if t >= T:
        return r
    return r + (1 - r) * (1 - (t - W) / (T - W))


@pytest.mark.parametrize("T, W, r", [(10, 0, 0.0), (25, 5, 0.1), (7, 6, 0.0), (12, 0, 1.0)])
@pytest.mark.parametrize("lr_type", [float, torch.tensor])
def test_linear_decay_matches_its_formula_per_group(T, W, r, lr_type):
    opt = two_groups(lr_type)
    sched = LinearDecay(opt, T, warmup_steps=W, final_lr_ratio=r)
    for t in range(T + 3):
        f = expected_factor(t, T, W, r)
        np.testing.assert_allclose(lrs_of(opt), [0.1 * f, 0.5 * f], rtol=1e-6, atol=1e-9)
        opt.step()
        sched.step()


def test_linear_decay_without_warmup_is_the_papers_formula():
    opt = two_groups()
    sched = LinearDecay(opt, 50)
    for t in range(50):
        assert lrs_of(opt)[0] == pytest.approx(0.1 * (1 - t / 50), rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


def test_linear_decay_survives_a_state_dict_round_trip_mid_run():
    opt = two_groups()
    sched = LinearDecay(opt, 30, warmup_steps=4, final_lr_ratio=0.05)
    for _ in range(11):
        opt.step()
        sched.step()
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    reference = []
    for _ in range(25):
        opt.step()
        sched.step()
        reference.append(lrs_of(opt))
    opt2 = two_groups()
    sched2 = LinearDecay(opt2, 30, warmup_steps=4, final_lr_ratio=0.05)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    resumed = []
    for _ in range(25):
        opt2.step()
        sched2.step()
        resumed.append(lrs_of(opt2))
    assert resumed == reference


def test_linear_decay_chains_with_torch_schedulers():
    opt = two_groups()
    chained = torch.optim.lr_scheduler.ChainedScheduler(
        [LinearDecay(opt, 20, warmup_steps=3), torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)])
    for t in range(19):
        f = expected_factor(t, 20, 3, 0.0) * 0.9 ** t
        np.testing.assert_allclose(lrs_of(opt), [0.1 * f, 0.5 * f], rtol=1e-9)
        opt.step()
        chained.step()


@pytest.mark.parametrize("kwargs, match", [
    ({"total_steps": 5, "warmup_steps": 5}, "Invalid total_steps: 5; it must exceed warmup_steps"),
    ({"total_steps": 0}, "Invalid total_steps"),
    ({"total_steps": 10, "warmup_steps": -1}, "Invalid warmup_steps"),
    ({"total_steps": 10, "final_lr_ratio": 1.5}, "Invalid final_lr_ratio"),
])
def test_linear_decay_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearDecay(two_groups(), **kwargs)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_recorded_norms_equal_a_float64_recomputation(norm, tmp_path):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in [(3, 4), (5,), (2, 2, 2)]]
    opt = zoo.Adam(ps, lr=1e-2)
    rec = GradNormRecorder(opt, norm=norm, block=3)
    expected = []
    for step in range(10):
        for i, p in enumerate(ps):
            p.grad = None if (step + i) % 4 == 0 else torch.randn_like(p) * (step + 1)
        grads = [p.grad.double().reshape(-1) for p in ps if p.grad is not None]
        flat = torch.cat(grads)
        expected.append(float(flat.norm() if norm == "l2" else flat.abs().sum()))
        opt.step()
    np.testing.assert_allclose(rec.norms, expected, rtol=1e-6)  # float32 per-tensor norms
    rec.save(tmp_path / "norms.npz")
    norms, kind = GradNormRecorder.load(tmp_path / "norms.npz")
    assert kind == norm and np.array_equal(norms, rec.norms)
    rec.remove()
    opt.step()
    assert len(rec.norms) == 10


def test_recorder_keeps_pending_norms_on_the_device_until_a_block_is_full():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    rec = GradNormRecorder(opt, block=4)
    for _ in range(6):
        p.grad = torch.ones(3)
        opt.step()
    assert len(rec._host) == 1 and len(rec._pending) == 2
    assert all(isinstance(t, torch.Tensor) and t.device == p.device for t in rec._pending)
    assert rec.norm == "l2"  # SGD-like default


def test_refined_schedule_from_a_recorder_follows_the_optimizer_defaults():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8))
    opt = torch.optim.Adam([p], lr=0.01)
    rec = GradNormRecorder(opt)
    assert rec.norm == "l1"
    for t in range(60):
        p.grad = torch.randn(8) / (1 + t)
        opt.step()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(8))], lr=0.01)
    sched = RefinedSchedule(opt2, recorder=rec)
    np.testing.assert_array_equal(sched.schedule, refine(rec.norms, power=1))
    seen = []
    for _ in range(62):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched.step()
    np.testing.assert_allclose(seen[:60], 0.01 * sched.schedule, rtol=1e-12, atol=1e-18)
    assert seen[60:] == [0.0, 0.0]
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(8))], lr=0.1)
    np.testing.assert_array_equal(RefinedSchedule(sgd, grad_norms=rec.norms).schedule,
                                  refine(rec.norms, power=2))


def test_refined_schedule_needs_one_source_of_norms():
    with pytest.raises(ValueError, match="exactly one of grad_norms= or recorder="):
        RefinedSchedule(two_groups())
