"""diffGrad vs Adam on a small CNN (Dubey et al., "diffGrad: An Optimization Method for
Convolutional Neural Networks", arXiv:1909.11015): the paper reports diffGrad reaching lower
training loss than Adam on CNNs.

A conv 8 - pool - conv 16 - pool - linear network on scikit-learn's digits (75/25 split,
minibatch 32), Adam and diffGrad (the zoo's, eps on sqrt(v_hat) as torch.optim.Adam) each at its
best lr from {1e-3, 3e-3, 1e-2, 3e-2} by mean final training loss, over several seeds.

    python bench/diffgrad.py [--quick] [--out bench/out]
"""

from __future__ import annotations

import os
import statistics
import sys

import matplotlib
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import problems as P  # noqa: E402
from harness import claim, cli, paired_verdict, progress, record, save_figure  # noqa: E402

import torchopt_zoo as zoo  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OPTIMIZERS = {"Adam": zoo.Adam, "diffGrad": zoo.DiffGrad}
LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def train(make, lr, seed, epochs, data, batch=32):
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = P.cnn()
    opt = make(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=gen).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
        with torch.no_grad():
            curve.append(float(torch.nn.functional.cross_entropy(model(Xtr), ytr)))
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
    return curve, acc


def main():
    args = cli(__doc__, "2 seeds, 3 epochs")
    torch.set_num_threads(1)
    seeds, epochs = ((0, 1), 3) if args.quick else ((0, 1, 2, 3, 4), 15)
    data = P.digit_images()
    best = {}
    for name, make in OPTIMIZERS.items():
        progress(f"{name}: lrs {LRS}, seeds {list(seeds)}")
        for lr in LRS:
            runs = [train(make, lr, s, epochs, data) for s in seeds]
            mean = statistics.fmean(r[0][-1] for r in runs)
            if name not in best or mean < best[name][1]:
                best[name] = (lr, mean, runs)
    print(f"\n### small CNN on digits, {epochs} epochs, batch 32, seeds {list(seeds)}\n")
    print("| optimizer | best lr | final train loss (mean ± sd) | test accuracy (mean ± sd) |")
    print("|---|---|---|---|")
    for name, (lr, _, runs) in best.items():
        losses, accs = [r[0][-1] for r in runs], [r[1] for r in runs]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        print(f"| {name} | {lr:g} | {statistics.fmean(losses):.4f} ± {sd(losses):.4f} | "
              f"{statistics.fmean(accs):.4f} ± {sd(accs):.4f} |")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (lr, _, runs) in best.items():
        ax.semilogy(np.arange(1, epochs + 1), np.mean([r[0] for r in runs], axis=0), label=f"{name} (lr {lr:g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss, mean over seeds")
    ax.set_title("small CNN on digits")
    ax.legend()
    save_figure(fig, args.out, "diffgrad.png")
    verdict, text = paired_verdict([r[0][-1] for r in best["diffGrad"][2]], [r[0][-1] for r in best["Adam"][2]])
    record(args.out, "diffgrad", [
        claim("diffGrad reaches a lower training loss than Adam on a CNN", "Dubey et al., arXiv:1909.11015",
              f"final training loss, diffGrad vs Adam (best lr each): {text}", verdict),
    ], raw={name: {"lr": b[0], "curves": [r[0] for r in b[2]], "acc": [r[1] for r in b[2]]}
            for name, b in best.items()})


if __name__ == "__main__":
    main()
