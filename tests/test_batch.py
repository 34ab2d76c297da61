"""Adaptive batch-size tests (docs/algorithms.md section 4) against float64 recomputations."""

import copy
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import torchopt_zoo as zoo
from torchopt_zoo.batch import (AdaptiveBatchSampler, AdaptiveBatchSize, micro_batch_gradients,
                                next_batch_size, per_sample_gradients, statistic)

grad_matrices = st.integers(2, 12).flatmap(lambda b: st.integers(1, 6).flatmap(
    lambda d: st.lists(st.lists(st.floats(-10, 10), min_size=d, max_size=d), min_size=b, max_size=b)))


def reference(test, G, eta=0.1, theta=0.1, nu=0.1, floor=1e-3):
    """The formulas of docs/algorithms.md section 4, written out with numpy loops."""
    G = np.array(G, dtype=np.float64)
    b, d = G.shape
    g = G.mean(0)
    gg = g @ g
    var = lambda v: ((v - v.mean()) ** 2).sum() / (b - 1)  # noqa: E731
    if test == "norm":
        return sum(((G[i] - g) ** 2).sum() for i in range(b)) / (b - 1) / (eta ** 2 * gg)
    if test == "coordinate":
        return max(var(G[:, j]) / g[j] ** 2 for j in range(d)
                   if abs(g[j]) > floor * np.abs(g).max()) / eta ** 2
    inner = var(np.array([G[i] @ g for i in range(b)])) / (theta ** 2 * gg ** 2)
    R = np.array([G[i] - (G[i] @ g) / gg * g for i in range(b)])
    ortho = sum(var(R[:, j]) for j in range(d)) / (nu ** 2 * gg)
    return {"inner_product": inner, "orthogonality": ortho, "augmented": max(inner, ortho)}[test]


def authors_reference(test, G, sizes, theta=0.1, nu=0.1):
    """The authors' per-tensor statistics (timlautk/AdAdaGrad, tests.py), written out with numpy
    loops: per tensor j the variance over samples of <G_i^j, g^j> and of the residual of G_i^j
    after its projection on g^j, summed over tensors, over |g|^4 and |g|^2 of the whole gradient."""
    G = np.array(G, dtype=np.float64)
    b = G.shape[0]
    gg = G.mean(0) @ G.mean(0)
    var = lambda v: ((v - v.mean()) ** 2).sum() / (b - 1)  # noqa: E731
    inner = ortho = 0.0
    start = 0
    for n in sizes:
        Gj = G[:, start:start + n]
        gj = Gj.mean(0)
        start += n
        inner += var(np.array([Gj[i] @ gj for i in range(b)]))
        if gj @ gj > 0:
            R = np.array([Gj[i] - (Gj[i] @ gj) / (gj @ gj) * gj for i in range(b)])
            ortho += sum(var(R[:, k]) for k in range(n))
    inner /= theta ** 2 * gg ** 2
    ortho /= nu ** 2 * gg
    return {"inner_product": inner, "orthogonality": ortho, "augmented": max(inner, ortho)}[test]


@pytest.mark.parametrize("test", ["inner_product", "orthogonality", "augmented"])
@given(G=grad_matrices.filter(lambda G: len(G[0]) >= 2), data=st.data())
def test_per_tensor_statistics_match_a_float64_recomputation_of_the_authors(test, G, data):
    T = torch.tensor(G, dtype=torch.float64)
    assume(float(T.mean(0).norm()) > 1e-6)
    d = T.shape[1]
    cut = data.draw(st.integers(1, d - 1))
    sizes = [cut, d - cut]
    assert statistic(test, T, sizes=sizes) == pytest.approx(authors_reference(test, G, sizes), rel=1e-9, abs=1e-12)
    assert statistic(test, T, sizes=[d]) == pytest.approx(reference(test, G), rel=1e-9, abs=1e-12)


def test_adadagrad_per_tensor_statistics_split_the_gradient_by_parameter():
    """``statistics="per_tensor"`` hands the optimizer's parameter sizes to the test."""
    model = small_net()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    _, G = per_sample_gradients(model, torch.nn.functional.cross_entropy, x, y)
    sizes = [p.numel() for p in model.parameters()]
    opt = zoo.AdAdaGrad(model.parameters(), test="inner_product", statistics="per_tensor",
                        initial_batch_size=2, max_batch_size=10 ** 6)
    opt.step(per_sample_grads=G)
    expected = math.ceil(authors_reference("inner_product", G.numpy(), sizes))
    assert opt.batch.size == max(2, expected)


@pytest.mark.parametrize("test", ["norm", "inner_product", "orthogonality", "augmented", "coordinate"])
@given(G=grad_matrices, size=st.integers(2, 50))
def test_each_test_matches_a_float64_recomputation(test, G, size):
    T = torch.tensor(G, dtype=torch.float64)
    assume(float(T.mean(0).norm()) > 1e-6)
    expected = reference(test, G)
    assert statistic(test, T) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    nb = next_batch_size(test, T, size, 10_000)
    assert nb == min(10_000, max(size, math.ceil(statistic(test, T))))


def test_micro_batch_estimator_is_unbiased_for_the_trace_of_the_covariance():
    gen = torch.Generator().manual_seed(0)
    d, M, m, R = 5, 8, 4, 3000
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    cov = A @ A.T
    mu = torch.full((d,), 3.0, dtype=torch.float64)
    estimates = []
    for _ in range(R):
        samples = mu + torch.randn(M * m, d, generator=gen, dtype=torch.float64) @ A.T
        means = samples.view(M, m, d).mean(1)  # one row per micro-batch
        g = means.mean(0)
        estimates.append(statistic("norm", means, samples_per_row=m, eta=1.0) * float(g @ g))
    est = torch.tensor(estimates)
    se = float(est.std()) / math.sqrt(R)
    assert abs(float(est.mean()) - float(torch.trace(cov))) <= 5 * se


@given(st.lists(grad_matrices, min_size=1, max_size=8), st.integers(2, 40), st.integers(2, 200))
def test_batch_size_never_shrinks_and_is_capped(updates, initial, cap):
    assume(cap >= initial)
    ctrl = AdaptiveBatchSize("norm", eta=0.5, initial=initial, max=cap)
    for G in updates:
        T = torch.tensor(G, dtype=torch.float64)
        if float(T.mean(0).norm()) < 1e-6:
            continue
        before = ctrl.size
        ctrl.update(T)
        assert before <= ctrl.size <= cap
    assert ctrl.history == sorted(ctrl.history)


@pytest.mark.parametrize("make, match", [
    (lambda: statistic("norm", torch.ones(1, 3)), "at least 2 per-sample"),
    (lambda: statistic("norm", torch.tensor([[1.0, 0.0], [-1.0, 0.0]])), r"mean gradient is zero \(\|g\| = 0\)"),
    (lambda: statistic("norm", torch.ones(3, 2), eta=0.0), r"Invalid eta value: 0\.0; allowed range is \(0\.0"),
    (lambda: statistic("median", torch.ones(3, 2)), "Invalid test"),
    (lambda: AdaptiveBatchSize(initial=64, max=32), "Invalid max value: 32; it must be >= initial"),
    (lambda: AdaptiveBatchSize(initial=1), "Invalid initial"),
])
def test_bad_input_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()


def test_per_sample_and_micro_batch_gradients_match_explicit_backward():
    model = small_net()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    loss_fn = torch.nn.functional.cross_entropy
    loss, G = per_sample_gradients(model, loss_fn, x, y)
    rows = []
    for i in range(6):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.allclose(G, torch.stack(rows), atol=1e-12)
    mean = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float(loss) == pytest.approx(float(loss_fn(model(x), y)))
    _, G2, m = micro_batch_gradients(model, loss_fn, x, y, 3)
    assert m == 2 and torch.allclose(G2, torch.stack(rows).view(3, 2, -1).mean(1), atol=1e-12)
    per_sample_gradients(model, loss_fn, x, y)
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), torch.stack(rows).mean(0))
    assert mean.shape == G[0].shape


def test_sampler_follows_the_controller_and_reproduces():
    ctrl = AdaptiveBatchSize(initial=4, max=64)
    sampler = AdaptiveBatchSampler(30, ctrl, seed=3)
    batches = []
    for i, batch in enumerate(sampler):
        batches.append(batch)
        if i == 1:
            ctrl.size = 10  # the controller grows the batch mid-epoch
    assert [len(b) for b in batches] == [4, 4, 10, 10, 2]
    assert sorted(sum(batches, [])) == list(range(30))  # an epoch covers every sample once
    again = AdaptiveBatchSampler(30, AdaptiveBatchSize(initial=4, max=64), seed=3)
    assert next(iter(again)) == batches[0] and sampler.epoch == 1


def test_adadagrad_grows_its_batch_and_round_trips_state():
    model = small_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    opt = zoo.AdAdaGrad(model.parameters(), lr=0.1, test="coordinate", eta=0.5, initial_batch_size=4,
                        max_batch_size=64)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_sampler=opt.sampler(len(data), seed=0))
    for _ in range(3):
        for xb, yb in loader:
            if len(xb) < 2:
                continue
            _, G = per_sample_gradients(model, torch.nn.functional.cross_entropy, xb, yb)
            opt.step(per_sample_grads=G)
    assert opt.batch.size > 4 and opt.batch.history == sorted(opt.batch.history)
    other = zoo.AdAdaGrad(small_net().parameters(), lr=0.1, initial_batch_size=4, max_batch_size=64)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert other.batch.size == opt.batch.size and other.batch.history == opt.batch.history
    assert copy.deepcopy(opt).batch.size == opt.batch.size
    norm = zoo.AdAdaGradNorm(small_net().parameters(), initial_batch_size=8, max_batch_size=16)
    assert norm.batch.test == "norm" and zoo.AdAdaGrad(small_net().parameters()).batch.test == "inner_product"


def test_moments_combine_across_two_gloo_processes(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "moments_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, str(r), str(tmp_path / "rdv"), str(tmp_path / f"m{r}.pt")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-3000:]
    got = torch.load(tmp_path / "m0.pt")
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(5 + 3 * r, 4, generator=gen, dtype=torch.float64) * (1 + r) + r for r in range(2)]
    G = torch.cat(parts)
    assert got["count"] == len(G)
    assert torch.allclose(got["mean"], G.mean(0), atol=1e-12)
    assert torch.allclose(got["m2_vector"], ((G - G.mean(0)) ** 2).sum(0), atol=1e-10)
    assert got["m2_trace"] == pytest.approx(float(((G - G.mean(0)) ** 2).sum()), rel=1e-12)
