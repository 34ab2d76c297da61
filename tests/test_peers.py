"""diffGrad against torch_optimizer (the paper authors' update), AdaBelief against a float64
reference written from the paper's Algorithm 2, AdaGradNorm against Ward et al.'s recursion."""

import math

import numpy as np
import pytest
import torch

import torchopt_zoo as zoo

torch_optimizer = pytest.importorskip("torch_optimizer")


def _quartic_grads(x):
    # a non-quadratic loss so that gradients vary between steps
    return 4 * x ** 3 - 2 * x + 0.5


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("foreach", [False, True])
def test_diffgrad_original_matches_torch_optimizer(weight_decay, foreach):
    torch.manual_seed(0)
    w0 = torch.randn(6, 5)
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    oa = zoo.DiffGrad([a], lr=1e-2, eps_mode="original", weight_decay=weight_decay, foreach=foreach)
    ob = torch_optimizer.DiffGrad([b], lr=1e-2, weight_decay=weight_decay)
    for _ in range(100):
        for x, o in ((a, oa), (b, ob)):
            o.zero_grad()
            (x ** 4 - x ** 2 + 0.5 * x).sum().backward()
            o.step()
    torch.testing.assert_close(a, b)


def adabelief_paper(x0, grad, steps, lr, beta1, beta2, eps):
    """AdaBelief, Algorithm 2 of Zhuang et al. (2010.07468), in float64 numpy."""
    x, m, s = x0.copy(), np.zeros_like(x0), np.zeros_like(x0)
    for t in range(1, steps + 1):
        g = grad(x)
        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * (g - m) ** 2 + eps
        m_hat = m / (1 - beta1 ** t)
        s_hat = s / (1 - beta2 ** t)
        x = x - lr * m_hat / (np.sqrt(s_hat) + eps)
    return x


@pytest.mark.parametrize("foreach", [False, True])
def test_adabelief_matches_paper_in_float64(foreach):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(7)
    expected = adabelief_paper(x0, _quartic_grads, 200, 1e-2, 0.9, 0.999, 1e-16)
    x = torch.tensor(x0, requires_grad=True)
    opt = zoo.AdaBelief([x], lr=1e-2, foreach=foreach)
    for _ in range(200):
        x.grad = _quartic_grads(x.detach())
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_adabelief_original_eps_folds_bias_correction_into_step():
    # eps_mode="original": x -= lr * sqrt(bc2)/bc1 * m / (sqrt(s) + eps); equal to "torch" when eps = 0
    rng = np.random.default_rng(1)
    x0 = torch.tensor(rng.standard_normal(5))
    res = []
    for mode in ("torch", "original"):
        x = x0.clone().requires_grad_()
        opt = zoo.AdaBelief([x], lr=1e-2, eps=0.0, eps_mode=mode)
        for _ in range(50):
            x.grad = _quartic_grads(x.detach())
            opt.step()
        res.append(x.detach())
    torch.testing.assert_close(res[0], res[1], rtol=1e-12, atol=1e-12)


def test_adagrad_norm_follows_ward_recursion():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    ref = [x.copy() for x in xs]
    b2 = 0.5 ** 2
    params = [torch.tensor(x, requires_grad=True) for x in xs]
    opt = zoo.AdaGradNorm(params, lr=0.3, b0=0.5)
    for _ in range(30):
        gs = [_quartic_grads(x) for x in ref]
        b2 += sum(float((g ** 2).sum()) for g in gs)
        ref = [x - 0.3 * g / math.sqrt(b2) for x, g in zip(ref, gs)]
        for p in params:
            p.grad = _quartic_grads(p.detach())
        opt.step()
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-12)
    assert float(opt.state[params[0]]["norm_sum_sq"]) == pytest.approx(b2, rel=1e-12)
