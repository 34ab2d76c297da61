"""Adaptive batch sizes (AdAdaGrad, Lau, Liu & Kolar, arXiv:2402.11215) vs fixed batches.

Two tasks on scikit-learn's digits (75/25 split): softmax regression and a small CNN
(conv 8 - pool - conv 16 - pool - linear). Each run processes the same number of training
samples. AdaGrad (lr 0.05) and AdaGrad-Norm (lr 1.0) with the batch grown by the norm test
(eta = 0.5; AdaGrad also eta = 1.0) or the inner-product test (theta = 0.5) from 16 up to 1,024
samples, and AdaGrad with the coordinate-wise test (eta = 0.5), against each optimizer at a fixed
batch of 16 and of 512.
The adaptive runs compute per-sample gradients with torch.func (their cost is in the wall time).
Reported: optimizer steps, samples and seconds to reach the target training loss, final training
loss and test accuracy, final batch size; plots of batch size and training loss against samples.

    python bench/batch_growth.py [--quick] [--out bench/out]
"""

from __future__ import annotations

import os
import sys
import time

import matplotlib
import torch

sys.path.insert(0, os.path.dirname(__file__))
import problems as P  # noqa: E402
from harness import claim, cli, progress, record, save_figure  # noqa: E402

import torchopt_zoo as zoo  # noqa: E402
from torchopt_zoo.batch import per_sample_gradients  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGET = {"softmax regression": 0.3, "CNN": 0.15}


MODELS = {"softmax regression": P.softmax_regression, "CNN": P.cnn}


def configs():
    ada = dict(initial_batch_size=16, max_batch_size=1024)
    return {
        "AdaGrad, norm test": lambda p: zoo.AdAdaGrad(p, lr=0.05, test="norm", eta=0.5, **ada),
        "AdaGrad, norm test (eta 1.0)": lambda p: zoo.AdAdaGrad(p, lr=0.05, test="norm", eta=1.0, **ada),
        "AdaGrad, inner-product test": lambda p: zoo.AdAdaGrad(p, lr=0.05, test="inner_product", theta=0.5, **ada),
        "AdaGrad, coordinate test": lambda p: zoo.AdAdaGrad(p, lr=0.05, test="coordinate", eta=0.5, **ada),
        "AdaGrad, fixed batch 16": (lambda p: zoo.Adagrad(p, lr=0.05), 16),
        "AdaGrad, fixed batch 512": (lambda p: zoo.Adagrad(p, lr=0.05), 512),
        "AdaGradNorm, norm test": lambda p: zoo.AdAdaGradNorm(p, lr=1.0, test="norm", eta=0.5, **ada),
        "AdaGradNorm, inner-product test": lambda p: zoo.AdAdaGradNorm(p, lr=1.0, test="inner_product", theta=0.5, **ada),
        "AdaGradNorm, fixed batch 16": (lambda p: zoo.AdaGradNorm(p, lr=1.0), 16),
        "AdaGradNorm, fixed batch 512": (lambda p: zoo.AdaGradNorm(p, lr=1.0), 512),
    }


def run(task, make, budget, data, seed=0):
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = MODELS[task]()
    loss_fn = torch.nn.functional.cross_entropy
    fixed = isinstance(make, tuple)
    opt = make[0](model.parameters()) if fixed else make(model.parameters())
    if fixed:
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(range(len(ytr)), generator=torch.Generator().manual_seed(seed)),
            make[1], drop_last=False)
    else:
        sampler = opt.sampler(len(ytr), seed=seed)
    samples = steps = 0
    trace, start, reached = [], time.perf_counter(), None
    next_eval = 0
    while samples < budget:
        for idx in sampler:
            if len(idx) < 2:
                continue
            xb, yb = Xtr[idx], ytr[idx]
            opt.zero_grad()
            if fixed:
                loss_fn(model(xb), yb).backward()
                opt.step()
            else:
                _, G = per_sample_gradients(model, loss_fn, xb, yb)
                opt.step(per_sample_grads=G)
            samples += len(idx)
            steps += 1
            if samples >= next_eval or samples >= budget:
                with torch.no_grad():
                    full = float(loss_fn(model(Xtr), ytr))
                size = make[1] if fixed else opt.batch.size
                trace.append((samples, full, size))
                if reached is None and full <= TARGET[task]:
                    reached = (steps, samples, time.perf_counter() - start)
                next_eval = samples + len(ytr) // 4
            if samples >= budget:
                break
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
    return {"trace": trace, "reached": reached, "steps": steps, "samples": samples, "acc": acc,
            "seconds": time.perf_counter() - start}


def main():
    args = cli(__doc__, "a fifth of the sample budget")
    torch.set_num_threads(1)
    data = P.digit_images()
    epochs = 6 if args.quick else 30
    budget = epochs * len(data[1])
    fig, axes = plt.subplots(2, len(MODELS), figsize=(7 * len(MODELS), 9), squeeze=False)
    results = {}
    for col, task in enumerate(MODELS):
        print(f"\n### {task}: {budget:,} training samples per run ({epochs} epochs of {len(data[1])}), "
              f"target training loss {TARGET[task]}\n")
        print("| run | steps to target | samples to target | seconds to target | steps in all | "
              "final train loss | test accuracy | final batch |")
        print("|---|---|---|---|---|---|---|---|")
        for name, make in configs().items():
            progress(f"{task} / {name}")
            r = run(task, make, budget, data)
            results[(task, name)] = r
            hit = r["reached"]
            cells = [f"{hit[0]:,}", f"{hit[1]:,}", f"{hit[2]:.2f}"] if hit else ["—", "—", "—"]
            s, loss, size = r["trace"][-1]
            print(f"| {name} | {' | '.join(cells)} | {r['steps']:,} | {loss:.4f} | {r['acc']:.4f} | {size} |")
            xs = [t[0] for t in r["trace"]]
            style = "--" if "fixed" in name else "-"
            axes[0][col].semilogy(xs, [t[1] for t in r["trace"]], style, label=name)
            axes[1][col].semilogy(xs, [t[2] for t in r["trace"]], style, label=name)
        axes[0][col].axhline(TARGET[task], color="k", lw=0.5)
        axes[0][col].set_title(f"{task}: training loss", fontsize=9)
        axes[1][col].set_title(f"{task}: batch size", fontsize=9)
        for ax in axes[:, col]:
            ax.set_xlabel("training samples processed")
            ax.legend(fontsize=8)
        axes[0][col].set_ylabel("full training loss")
        axes[1][col].set_ylabel("batch size")
    save_figure(fig, args.out, "batch_growth.png", dpi=100)
    # the rule: every adaptive configuration against the fixed batch 16 of its base optimizer on
    # the same task; it wins where it reaches the target and in fewer steps (or where only it does)
    steps = lambda r: r["reached"][0] if r["reached"] else None  # noqa: E731
    wins, cases = [], 0
    for (task, name), r in results.items():
        if "fixed" in name:
            continue
        cases += 1
        small = steps(results[(task, name.split(",")[0] + ", fixed batch 16")])
        if steps(r) is not None and (small is None or steps(r) < small):
            wins.append(f"{task} / {name}")
    held = True if 2 * len(wins) > cases else False if 2 * len(wins) < cases else None
    record(args.out, "batch_growth", [
        claim("an adaptively growing batch reaches a target loss in fewer optimizer steps than a small fixed batch",
              "Lau, Liu & Kolar, arXiv:2402.11215",
              f"{len(wins)} of {cases} adaptive configurations win against batch 16 of their base optimizer "
              f"(held if more than half; one seed): {', '.join(wins) or 'none'}", held),
    ], raw={f"{t} / {n}": {"trace": r["trace"], "steps": r["steps"], "acc": r["acc"]} for (t, n), r in results.items()})


if __name__ == "__main__":
    main()
