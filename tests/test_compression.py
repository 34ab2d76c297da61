"""Compressors and simulated error-feedback methods (docs/algorithms.md section 5), in float64."""

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torchopt_zoo.compression import (EF14, EF21, EF21SGDM, CompressedGD, EControl, Identity, RandK,
                                      TopK, ef21_step_size)

vectors = st.integers(1, 40).flatmap(lambda d: st.lists(st.floats(-1e3, 1e3), min_size=d, max_size=d))


@given(vectors, st.integers(1, 40))
def test_top_k_is_contractive_and_keeps_the_largest_entries(values, k):
    x = torch.tensor(values, dtype=torch.float64)
    d = x.numel()
    k = min(k, d)
    c = TopK(k=k)
    y = c.compress(x)
    assert int((y != 0).sum()) <= k
    assert float(((y - x) ** 2).sum()) <= (1 - c.alpha(d)) * float((x ** 2).sum()) * (1 + 1e-12) + 1e-300
    kept = y != 0
    if kept.any() and (~kept).any():
        assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
    assert torch.equal(c.compress_rows(torch.stack([x, -x])), torch.stack([y, -y]))


def test_rand_k_is_contractive_in_expectation_and_scaled_rand_k_unbiased():
    torch.manual_seed(0)
    x = torch.randn(50, dtype=torch.float64)
    plain, scaled = RandK(k=5, seed=1), RandK(k=5, scaled=True, seed=2)
    draws = 4000
    err = sum(float(((plain.compress(x) - x) ** 2).sum()) for _ in range(draws)) / draws
    # E|C(x) - x|^2 = (1 - k/d)|x|^2 exactly; the tolerance is 5 standard errors of the mean
    per_draw = [float(((plain.compress(x) - x) ** 2).sum()) for _ in range(500)]
    se = torch.tensor(per_draw).std().item() / math.sqrt(draws)
    assert abs(err - 0.9 * float(x @ x)) <= 5 * se
    mean = sum(scaled.compress(x) for _ in range(draws)) / draws
    assert float((mean - x).norm()) <= 0.1 * float(x.norm())
    assert plain.bits(50) == 5 * 32 and TopK(k=5).bits(50) == 5 * (32 + 6)
    assert Identity(value_bits=64).bits(50) == 50 * 64


@pytest.mark.parametrize("make, match", [
    (lambda: TopK(k=0), r"Invalid k: 0; allowed range is integers in \[1, d\]"),
    (lambda: TopK(k=5).compress(torch.zeros(3)), "Invalid k: 5; .* d = 3"),
    (lambda: TopK(ratio=1.5), r"Invalid ratio value: 1\.5; allowed range is \(0\.0, 1\.0\]"),
    (lambda: TopK(ratio=0.0), "Invalid ratio"),
    (lambda: TopK(k=1, ratio=0.5), "exactly one of k= or ratio="),
    (lambda: EF21([torch.zeros(3)], 2, RandK(k=1, scaled=True), 0.1), "needs a contractive compressor"),
    (lambda: EF21([torch.zeros(3)], 2, TopK(k=1), 0.1).step([[torch.zeros(3)]]),
     "n_workers = 2 but got gradients from 1 workers"),
    (lambda: EControl([torch.zeros(3)], 0, TopK(k=1), 0.1), "Invalid n_workers"),
    (lambda: EF21([torch.zeros(3)], 2, TopK(k=1), 0.1, weights=[1.0]), "Invalid weights"),
])
def test_bad_input_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def heterogeneous_least_squares(n=10, d=20, seed=0):
    """The reference problem of docs/algorithms.md section 5: worker i's data scaled by (1 + i)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.stack([torch.randn(d, d, generator=gen, dtype=torch.float64) * (1 + i) for i in range(n)])
    b = torch.stack([torch.randn(d, generator=gen, dtype=torch.float64) * (1 + i) for i in range(n)])
    AtA = A.transpose(1, 2) @ A / d
    Atb = torch.einsum("nij,ni->nj", A, b) / d
    L_workers = torch.linalg.eigvalsh(AtA).max(1).values.tolist()
    L = float(torch.linalg.eigvalsh(AtA.mean(0)).max())
    return (lambda x: AtA @ x - Atb), L, L_workers


def run(make, steps, d=20):
    grads, L, Ls = heterogeneous_least_squares(d=d)
    comp = TopK(k=1, value_bits=64)
    x = torch.zeros(d, dtype=torch.float64)
    opt = make([x], comp, ef21_step_size(L, Ls, comp.alpha(d)))
    for _ in range(steps):
        opt.step(grads(x))
    g = grads(x).mean(0)
    return float(g @ g), opt


def test_reference_behaviour_on_heterogeneous_least_squares():
    stalled, _ = run(lambda p, c, lr: CompressedGD(p, 10, c, lr), 4000)
    assert stalled > 1.0  # compressed GD without feedback stalls far from a stationary point
    for make in (lambda p, c, lr: EF21(p, 10, c, lr), lambda p, c, lr: EControl(p, 10, c, lr, eta=0.1)):
        value, opt = run(make, 20000)
        assert value < 1e-20
        assert opt.ef_state["bits_total"] == 10 * 20 * 64 + 19999 * 10 * (64 + 5)
    diverged, _ = run(lambda p, c, lr: EControl(p, 10, c, lr, eta=1.0), 4000)
    assert not math.isfinite(diverged) or diverged > 1e10


def test_econtrol_with_eta_zero_is_ef21_step_by_step():
    grads, L, Ls = heterogeneous_least_squares(n=4, d=12, seed=3)
    x, y = torch.zeros(12, dtype=torch.float64), torch.zeros(12, dtype=torch.float64)
    a = EF21([x], 4, TopK(k=2), 0.01, init="compressed")
    b = EControl([y], 4, TopK(k=2), 0.01, eta=0.0, init="compressed")
    for _ in range(200):
        a.step(grads(x))
        b.step(grads(y))
        assert torch.equal(x, y)


def test_error_compensation_invariants():
    grads, L, Ls = heterogeneous_least_squares(n=5, d=15, seed=4)
    lr = 0.002
    x = torch.zeros(15, dtype=torch.float64)
    ef14 = EF14([x], 5, TopK(k=2), lr)
    virtual = x.clone()
    for _ in range(100):
        g = grads(x)
        ef14.step(g)
        virtual -= lr * g.mean(0)  # plain GD with the gradients at the real iterates
        assert torch.allclose(x - ef14.ef_state["e"].mean(0), virtual, rtol=0, atol=1e-12)
    z = torch.zeros(15, dtype=torch.float64)
    ec = EControl([z], 5, TopK(k=2), lr, eta=0.3)
    ec.step(grads(z))
    for _ in range(100):
        e_before = ec.ef_state["e"].clone()
        g = grads(z)
        ec.step(g)
        s = ec.ef_state
        assert torch.allclose(s["e"] + s["h"], e_before + g, rtol=0, atol=1e-12)


def test_ef21_w_equals_ef21_for_top_k():
    grads, L, Ls = heterogeneous_least_squares(n=6, d=10, seed=5)
    x, y = torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    a = EF21([x], 6, TopK(k=3), 0.001)
    b = EF21([y], 6, TopK(k=3), 0.001, weights=Ls)
    for _ in range(300):
        a.step(grads(x))
        b.step(grads(y))
    assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)
    assert ef21_step_size(L, Ls, 0.1, weighted=True) > ef21_step_size(L, Ls, 0.1)
    assert ef21_step_size(L, Ls, 1.0) == 1.0 / L


@pytest.mark.parametrize("cls, kw", [(EF14, {}), (EF21, {}), (EF21SGDM, {"eta": 0.2}),
                                     (EControl, {"eta": 0.1})])
def test_state_dict_round_trip_continues_identically(cls, kw):
    grads, L, Ls = heterogeneous_least_squares(n=3, d=8, seed=6)
    x = torch.zeros(8, dtype=torch.float64)
    opt = cls([x], 3, TopK(k=2), 0.005, **kw)
    for _ in range(10):
        opt.step(grads(x))
    y = x.clone()
    other = cls([y], 3, TopK(k=2), 0.005, **kw)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(10):
        opt.step(grads(x))
        other.step(grads(y))
    assert torch.equal(x, y) and opt.ef_state["bits_total"] == other.ef_state["bits_total"]


def test_ef21_sgdm_converges_with_noisy_gradients():
    grads, L, Ls = heterogeneous_least_squares(n=4, d=10, seed=7)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(10, dtype=torch.float64)
    opt = EF21SGDM([x], 4, TopK(k=3), 1e-3, eta=0.1)
    start = float((grads(x).mean(0) ** 2).sum())
    for _ in range(3000):
        opt.step(grads(x) + 0.1 * torch.randn(4, 10, generator=gen, dtype=torch.float64))
    assert float((grads(x).mean(0) ** 2).sum()) < 1e-3 * start
