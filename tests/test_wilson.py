"""Regression test on Wilson et al.'s construction (docs/algorithms.md section 3): gradient methods
find the minimum-norm solution (test error 0), diagonal-adaptive ones predict +1 everywhere."""

import pytest
import torch

import torchopt_zoo as zoo
from torchopt_zoo.testing import wilson_least_squares

X, Y, XT, YT = wilson_least_squares(n_train=40, n_test=500, p=0.6, seed=1)
LAM_MAX = float(torch.linalg.eigvalsh(X.T @ X).max())

CASES = [
    ("GD", lambda p: zoo.GD(p, lr=1.0 / LAM_MAX), "min-norm"),
    ("heavy ball", lambda p: zoo.GD(p, lr=0.5 / LAM_MAX, momentum=0.5), "min-norm"),
    ("AdaGradNorm", lambda p: zoo.AdaGradNorm(p, lr=1.0), "min-norm"),
    ("Adagrad", lambda p: zoo.Adagrad(p, lr=0.1), "sign"),
    ("RMSprop", lambda p: zoo.RMSprop(p, lr=1e-3), "sign"),
    ("Adam", lambda p: zoo.Adam(p, lr=1e-3), "sign"),
    ("AdaBelief", lambda p: zoo.AdaBelief(p, lr=1e-3), "sign"),
    ("DiffGrad", lambda p: zoo.DiffGrad(p, lr=1e-3), "sign"),
]


@pytest.mark.parametrize("name,make,kind", CASES, ids=[c[0] for c in CASES])
def test_wilson_construction(name, make, kind):
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    opt = make([w])
    for _ in range(1500):
        opt.zero_grad()
        (0.5 * ((X @ w - Y) ** 2).sum()).backward()
        opt.step()
    w = w.detach()
    assert float(((X @ w - Y) ** 2).sum()) < 1e-3, "did not interpolate the training set"
    err = float((torch.sign(XT @ w) != YT).double().mean())
    if kind == "min-norm":
        w_min_norm = torch.linalg.pinv(X) @ Y
        torch.testing.assert_close(w, w_min_norm, rtol=1e-6, atol=1e-6)
        assert err == 0.0
    else:
        assert err == pytest.approx(float((YT < 0).double().mean()))
