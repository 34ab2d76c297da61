"""Adaptive batch sizes (AdAdaGrad, Lau, Liu & Kolar, arXiv:2402.11215) vs fixed batches.

Two tasks on scikit-learn's digits (75/25 split): softmax regression and a small CNN
(conv 8 - pool - conv 16 - pool - linear). Each run processes the same number of training
samples. AdaGrad (lr 0.05) and AdaGrad-Norm (lr 1.0) with the batch grown by the norm test
(eta = 0.5; AdaGrad also eta = 1.0) or the inner-product test (theta = 0.5) from 16 up to 1,024
samples, and AdaGrad with the coordinate-wise test (eta = 0.5), against each optimizer at a fixed
batch of 16 and of 512.
The adaptive runs compute per-sample gradients with torch.func (their cost is in the wall time).
Every run is repeated over 5 seeds (initialisation and sample order). Reported: optimizer steps,
samples and seconds to reach the target training loss (medians over the seeds that reach it),
final training loss and test accuracy, final batch size; plots of batch size and training loss
against samples (seed 0). The rule, fixed before the run: an adaptive configuration wins against
the fixed batch 16 of its base optimizer where, on every seed, it reaches the target in fewer steps
(or only it reaches it): 5 of 5 is a sign test at p = 1/32; it loses where it wins on no seed.
The claim holds if more than half of the configurations win, and is a "no" if more than half
cannot (they lose, or win on some seeds only).

    python bench/batch_growth.py [--quick] [--out bench/out]
"""

from __future__ import annotations

import os
import statistics
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
    epochs, seeds = (6, (0, 1)) if args.quick else (30, (0, 1, 2, 3, 4))
    budget = epochs * len(data[1])
    fig, axes = plt.subplots(2, len(MODELS), figsize=(7 * len(MODELS), 9), squeeze=False)
    results = {}  # (task, name) -> one run per seed
    for col, task in enumerate(MODELS):
        print(f"\n### {task}: {budget:,} training samples per run ({epochs} epochs of {len(data[1])}), "
              f"target training loss {TARGET[task]}, seeds {list(seeds)}\n")
        print("| run | seeds reaching the target | steps to target | samples to target | seconds to target "
              "| steps in all | final train loss | test accuracy | final batch |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, make in configs().items():
            progress(f"{task} / {name}: seeds {list(seeds)}")
            runs = results[(task, name)] = [run(task, make, budget, data, seed) for seed in seeds]
            hits = [r["reached"] for r in runs if r["reached"]]
            cells = ([f"{statistics.median(h[0] for h in hits):,.0f}", f"{statistics.median(h[1] for h in hits):,.0f}",
                      f"{statistics.median(h[2] for h in hits):.2f}"] if hits else ["—", "—", "—"])
            finals = [r["trace"][-1] for r in runs]
            loss, acc = [f[1] for f in finals], [r["acc"] for r in runs]
            sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)  # noqa: E731
            print(f"| {name} | {len(hits)} of {len(runs)} | {' | '.join(cells)} | "
                  f"{statistics.median(r['steps'] for r in runs):,.0f} | {statistics.fmean(loss):.4f} ± {sd(loss):.4f} | "
                  f"{statistics.fmean(acc):.4f} ± {sd(acc):.4f} | {statistics.median(f[2] for f in finals):,.0f} |")
            r = runs[0]
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
    # the rule (module docstring): every adaptive configuration against the fixed batch 16 of its
    # base optimizer on the same task, seed by seed
    steps = lambda r: r["reached"][0] if r["reached"] else None  # noqa: E731

    def beats(r, small):
        return steps(r) is not None and (steps(small) is None or steps(r) < steps(small))
    wins, losses, cases = [], [], 0
    for (task, name), runs in results.items():
        if "fixed" in name:
            continue
        cases += 1
        small = results[(task, name.split(",")[0] + ", fixed batch 16")]
        won = sum(beats(r, s) for r, s in zip(runs, small))
        if won == len(runs):
            wins.append(f"{task} / {name}")
        elif won == 0:
            losses.append(f"{task} / {name}")
    held = True if 2 * len(wins) > cases else False if 2 * (cases - len(wins)) > cases else None
    record(args.out, "batch_growth", [
        claim("an adaptively growing batch reaches a target loss in fewer optimizer steps than a small fixed batch",
              "Lau, Liu & Kolar, arXiv:2402.11215",
              f"{len(wins)} of {cases} adaptive configurations win against batch 16 of their base optimizer on "
              f"every one of {len(seeds)} seeds, {len(losses)} on none (held if more than half win): "
              f"{', '.join(wins) or 'none'}", held),
    ], raw={f"{t} / {n}": [{"trace": r["trace"], "steps": r["steps"], "acc": r["acc"], "reached": r["reached"]}
                           for r in runs] for (t, n), runs in results.items()})


if __name__ == "__main__":
    main()
