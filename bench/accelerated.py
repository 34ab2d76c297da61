"""Bregman-Lagrangian accelerated methods (Wibisono, Wilson & Jordan, arXiv:1603.04245) measured.

Suboptimality against iterations and against gradient evaluations (log-log) on

* an ill-conditioned quadratic (dimension 100, eigenvalues 1e-6 .. 1, known optimum);
* logistic regression on breast cancer (l2 = 1e-4; f* from scipy's L-BFGS-B in float64);
* a simplex-constrained quadratic (dimension 100, optimum inside the simplex, f* = 0).

Rows: GD (lr 1/L); torch.optim.SGD(nesterov=True, momentum=0.9) at its best lr from a grid;
BregmanAccelerated order 2 with fixed L, regular and adaptive descent-lemma L, order 3 with
gradients only (its weight cap binds: still O(1/k^2)); HigherOrderAccelerated (order 3, Hessian-
vector products) on the logistic problem; on the simplex, the entropic variant vs projected GD
and projected FISTA. The empirical rate exponent is the least-squares slope of
log(f - f*) against log(k) over the second half of the run (while f - f* > 1e-13).

    python bench/accelerated.py [--quick] [--out bench/out]
"""

from __future__ import annotations

import math
import os
import sys

import matplotlib
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import problems as P  # noqa: E402
from harness import claim, cli, progress, record, save_figure  # noqa: E402

import torchopt_zoo as zoo  # noqa: E402
from torchopt_zoo.stepsize import Backtracking, DescentLemma  # noqa: E402
from torchopt_zoo.testing import make_quadratic  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLOOR = 1e-13


class Counted:
    """``f`` with counts of gradient evaluations (closure calls with grad enabled) and forward ones."""

    def __init__(self, f):
        self.f, self.grads, self.forwards = f, 0, 0

    def closure(self, opt, x, backward=True):
        def closure():
            loss = self.f(x)
            if torch.is_grad_enabled():
                self.grads += 1
                if backward:
                    opt.zero_grad()
                    loss.backward()
            else:
                self.forwards += 1
            return loss
        return closure


def run_optimizer(make, f, x0, fstar, iters):
    """Suboptimality after each step and the gradient evaluations spent so far."""
    x = x0.clone().requires_grad_(True)
    opt = make([x])
    counted = Counted(f)
    higher = isinstance(opt, zoo.HigherOrderAccelerated)
    closure = counted.closure(opt, x, backward=not higher)
    subs, grads = [], []
    for _ in range(iters):
        opt.step(closure)
        with torch.no_grad():
            subs.append(max(float(f(x)) - fstar, 0.0))
        grads.append(counted.grads)
    extra = opt.stats.get("hvps", 0) if hasattr(opt, "stats") else 0
    return np.array(subs), np.array(grads), counted.forwards, extra


def rate_exponent(subs):
    k = np.arange(1, len(subs) + 1)
    keep = (k >= len(subs) // 2) & (subs > FLOOR)
    if keep.sum() < 3:
        keep = subs > FLOOR
        if keep.sum() < 3:
            return float("nan")
    return float(np.polyfit(np.log(k[keep]), np.log(subs[keep]), 1)[0])


def quadratic_problem():
    quad = make_quadratic(torch.logspace(-6, 0, 100, dtype=torch.float64), seed=0)
    x0 = torch.zeros(100, dtype=torch.float64)
    return "quadratic, kappa = 1e6", quad.f, x0, quad.f_star, quad.L, None


def logistic_problem():
    name, X, y = next(iter(P.binary_sets()))  # breast cancer
    prob = P.logistic(name, X, y, 1e-4)
    sys.path.insert(0, os.path.dirname(__file__))
    from linesearch import f_star
    L = float(torch.linalg.eigvalsh(X.T @ X / len(y)).max()) / 4 + 1e-4
    return "logistic, breast cancer, l2 = 1e-4", prob.loss, prob.w0, f_star(prob), L, prob


def euclidean_rows(L, iters):
    rows = {
        "GD (lr 1/L)": lambda p: zoo.GD(p, lr=1.0 / L),
        "order 2, fixed L": lambda p: zoo.BregmanAccelerated(p, L=L),
        "order 2, L by regular backtracking": lambda p: zoo.BregmanAccelerated(
            p, L=1.0, line_search=Backtracking(DescentLemma(), adaptive=False, reset="grow", gamma=1.5)),
        "order 2, L by adaptive backtracking": lambda p: zoo.BregmanAccelerated(
            p, L=1.0, line_search=Backtracking(DescentLemma(), adaptive=True, reset="grow", gamma=1.5)),
        "order 3, gradients only (cap binds)": lambda p: zoo.BregmanAccelerated(p, order=3, C=0.25, L=L),
    }
    return rows


def best_higher_order(f, x0, fstar, iters):
    """HigherOrderAccelerated with adaptive M, at its best (M0, C) from a grid (like torch's
    Nesterov row, which gets its best lr)."""
    best = None
    for M in (1e-2, 1e-1, 1.0):
        for C in (0.5, 2.0):
            out = run_optimizer(lambda p, M=M, C=C: zoo.HigherOrderAccelerated(
                p, M=M, C=C, line_search=Backtracking(DescentLemma(), reset="grow", gamma=1.5)),
                f, x0, fstar, iters)
            if best is None or out[0][-1] < best[0]:
                best = (out[0][-1], (M, C), out)
    return best


def best_nesterov(f, x0, fstar, L, iters):
    best = None
    for scale in (0.1, 0.3, 1.0, 2.0):
        subs, grads, fw, _ = run_optimizer(
            lambda p, s=scale: torch.optim.SGD(p, lr=s / L, momentum=0.9, nesterov=True), f, x0, fstar, iters)
        final = subs[-1] if np.isfinite(subs[-1]) else math.inf
        if best is None or final < best[0]:
            best = (final, scale, subs, grads, fw)
    return best


def project_simplex(v):
    """Euclidean projection onto the probability simplex (sort-based, Held et al.)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    idx = torch.arange(1, len(v) + 1, dtype=v.dtype)
    rho = int((u - css / idx > 0).nonzero().max())
    return torch.clamp(v - css[rho] / (rho + 1), min=0)


def simplex_problem(iters):
    n = 100
    quad = make_quadratic(torch.logspace(-3, 0, n, dtype=torch.float64), seed=1)
    gen = torch.Generator().manual_seed(1)
    c = torch.softmax(torch.randn(n, generator=gen, dtype=torch.float64), 0)
    f = lambda v: 0.5 * (v - c) @ (quad.Q @ (v - c))  # noqa: E731
    L1, L2 = float(quad.Q.abs().max()), quad.L
    x0 = torch.full((n,), 1.0 / n, dtype=torch.float64)
    curves = {}
    subs, grads, _, _ = run_optimizer(lambda p: zoo.BregmanAccelerated(p, L=L1, mirror="entropy"),
                                      f, x0, 0.0, iters)
    curves["order 2, entropic mirror (L = L1)"] = (subs, grads, 0, 0)
    for name, accelerated in (("projected GD (lr 1/L)", False), ("projected FISTA (lr 1/L)", True)):
        x, t, subs = x0.clone(), 1.0, []
        y = x0.clone()
        for _ in range(iters):
            g = quad.Q @ (y - c)
            x_new = project_simplex(y - g / L2)
            if accelerated:
                t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
                y = x_new + (t - 1) / t_new * (x_new - x)
                t = t_new
            else:
                y = x_new
            x = x_new
            subs.append(float(f(x)))
        curves[name] = (np.array(subs), np.arange(1, iters + 1), 0, 0)
    bound = np.array([4 * L1 * math.log(n) / (k * (k + 1)) for k in range(1, iters + 1)])
    return "simplex quadratic, n = 100 (f* = 0)", curves, bound


def report(title, curves):
    print(f"\n### {title}\n")
    print("| method | final f - f* | rate exponent | gradient evals | forward evals | Hessian-vector products |")
    print("|---|---|---|---|---|---|")
    for name, (subs, grads, fw, hvps) in curves.items():
        print(f"| {name} | {subs[-1]:.2e} | {rate_exponent(subs):.2f} | {int(grads[-1])} | {fw} | {hvps} |")


def main():
    args = cli(__doc__, "fewer iterations")
    iters = 150 if args.quick else 600
    panels = []
    for title, f, x0, fstar, L, prob in (quadratic_problem(), logistic_problem()):
        progress(title)
        curves = {}
        for name, make in euclidean_rows(L, iters).items():
            curves[name] = run_optimizer(make, f, x0, fstar, iters)
        if prob is not None:  # on the quadratic the cubic step is Newton's: one step solves it
            _, (M, C), out = best_higher_order(f, x0, fstar, 20 if args.quick else 60)
            curves[f"order 3, HigherOrderAccelerated (HVPs), best M0 {M:g}, C {C:g}"] = out
            # order 2 at the same cost, a Hessian-vector product counted as a gradient evaluation
            equal_cost = run_optimizer(euclidean_rows(L, iters)["order 2, fixed L"], f, x0, fstar,
                                       int(out[1][-1] + out[3]))
        final, scale, subs, grads, fw = best_nesterov(f, x0, fstar, L, iters)
        curves[f"torch SGD nesterov, momentum 0.9, best lr {scale:g}/L"] = (subs, grads, fw, 0)
        report(title, curves)
        panels.append((title, curves, None))
    title, curves, bound = simplex_problem(iters)
    report(title, curves)
    panels.append((title, curves, bound))
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 9), squeeze=False)
    for col, (title, curves, bound) in enumerate(panels):
        for name, (subs, grads, _, _) in curves.items():
            keep = subs > FLOOR
            k = np.arange(1, len(subs) + 1)
            axes[0][col].loglog(k[keep], subs[keep], label=name)
            axes[1][col].loglog(np.maximum(grads[keep], 1), subs[keep], label=name)
        if bound is not None:
            axes[0][col].loglog(np.arange(1, len(bound) + 1), bound, "k:", label="4 L1 log(n)/(k(k+1))")
        axes[0][col].set_title(title, fontsize=9)
        axes[0][col].set_xlabel("iteration k")
        axes[1][col].set_xlabel("gradient evaluations")
        for ax in axes[:, col]:
            ax.set_ylabel("f - f*")
            ax.legend(fontsize=8)
    save_figure(fig, args.out, "accelerated.png")
    quad_curves, logistic_curves, simplex_curves = (c for _, c, _ in panels)
    exponent = rate_exponent(quad_curves["order 2, fixed L"][0])
    ho_name = next(n for n in logistic_curves if "HigherOrder" in n)
    ho_subs, ho_grads, _, ho_hvps = logistic_curves[ho_name]
    cost = int(ho_grads[-1] + ho_hvps)  # a Hessian-vector product costs about a gradient
    o2_subs, o2_grads = equal_cost[0], equal_cost[1]
    o2_there = o2_subs[min(int(np.searchsorted(o2_grads, cost)), len(o2_subs) - 1)]
    ho_held, o2_text = ho_subs[-1] < o2_there, f"{o2_there:.1e}"
    ent = simplex_curves["order 2, entropic mirror (L = L1)"][0]
    record(args.out, "accelerated", [
        claim("order 2 (C = 1/4) converges as O(1/k^2) on smooth convex problems",
              "Wibisono, Wilson & Jordan, arXiv:1603.04245; Nesterov 1983",
              f"rate exponent {exponent:.2f} on the kappa = 1e6 quadratic", exponent <= -1.8),
        claim("the higher-order (p = 3) method converges faster than order 2",
              "Nesterov 2008; Wibisono, Wilson & Jordan, arXiv:1603.04245",
              f"f - f* {ho_subs[-1]:.1e} vs {o2_text} at equal cost, {cost} gradient evaluations and "
              f"Hessian-vector products ({int(ho_grads[-1])} + {int(ho_hvps)}; logistic)", ho_held),
        claim("the entropic variant meets 4 L1 log(n) / (k(k+1)) on the simplex",
              "docs/algorithms.md section 2", f"max ratio to the bound {float(np.max(ent / bound)):.2f}",
              bool(np.all(ent <= bound))),
    ], raw={title: {name: {"subopt": c[0], "grads": c[1]} for name, c in curves.items()}
            for title, curves, _ in panels})


if __name__ == "__main__":
    main()
