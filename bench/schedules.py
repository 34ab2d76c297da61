"""Linear decay and refined schedules (Defazio et al., arXiv:2310.07831) vs the usual ones.

Two tasks on scikit-learn's digits (75/25 split, minibatch 64, the same step budget for every
schedule): softmax regression with SGD + momentum 0.9 (zoo GD), and a 64-64-10 tanh MLP with Adam
(zoo Adam). Schedules: constant, step decay (x0.1 at 50% and 75%), cosine, linear decay, linear
decay with 5% warm-up, and the refined schedule built from the gradient norms recorded during
the linear-decay run with the same seed and lr (l2 norms and power 2 for SGD, l1 and power 1 for
Adam). Each schedule runs at its best lr from a small grid (by mean final training loss over the
seeds). Reported: final full-batch training loss and test accuracy, mean and spread over seeds.

Then the refinement again where the paper expects it to pay: a longer, noisier run, the small CNN
of ``bench/diffgrad.py`` on the digit images for 40 epochs of minibatch 32, with SGD + momentum
and with Adam; linear decay (recording the norms) against the refined schedule, best lr of each
from a grid, 5 seeds, with the recorded norms' shape (end over start, step-to-step noise).

    python bench/schedules.py [--quick] [--out bench/out]
"""

from __future__ import annotations

import os
import statistics
import sys

import matplotlib
import numpy as np
import torch
from sklearn import datasets

sys.path.insert(0, os.path.dirname(__file__))
from harness import all_verdicts, claim, cli, paired_verdict, progress, record, save_figure  # noqa: E402
from problems import cnn, digit_images  # noqa: E402

import torchopt_zoo as zoo  # noqa: E402
from torchopt_zoo.schedules import GradNormRecorder, LinearDecay, RefinedSchedule  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BATCH = 64
REFINED = "refined (from linear decay's norms)"


def digits_split(seed=0):
    data = datasets.load_digits()
    X = torch.as_tensor(data.data, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    y = torch.as_tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    return X[perm[:cut]], y[perm[:cut]], X[perm[cut:]], y[perm[cut:]]


def softmax_regression():
    return torch.nn.Linear(64, 10)


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))


TASKS = {
    "softmax regression, SGD+momentum": (softmax_regression,
                                         lambda p, lr: zoo.GD(p, lr=lr, momentum=0.9),
                                         (0.1, 0.3, 1.0, 3.0, 10.0)),
    "MLP 64-64-10, Adam": (mlp, lambda p, lr: zoo.Adam(p, lr=lr), (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)),
}
LONG_BATCH = 32
LONG_TASKS = {  # the refinement's second question: the CNN over many epochs
    "CNN, SGD+momentum": (cnn, lambda p, lr: zoo.GD(p, lr=lr, momentum=0.9), (0.03, 0.1, 0.3)),
    "CNN, Adam": (cnn, lambda p, lr: zoo.Adam(p, lr=lr), (1e-3, 3e-3, 1e-2)),
}


def schedules(total):
    return {
        "constant": lambda opt: None,
        "step decay": lambda opt: torch.optim.lr_scheduler.MultiStepLR(
            opt, [total // 2, 3 * total // 4], 0.1),
        "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, total),
        "linear decay": lambda opt: LinearDecay(opt, total),
        "linear decay + warm-up": lambda opt: LinearDecay(opt, total, warmup_steps=max(1, total // 20)),
    }


def train(task, lr, make_schedule, seed, epochs, data, record=False, batch=BATCH):
    make_model, make_opt, _ = {**TASKS, **LONG_TASKS}[task]
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = make_model()
    opt = make_opt(model.parameters(), lr)
    recorder = GradNormRecorder(opt) if record else None
    sched = make_schedule(opt)
    gen = torch.Generator().manual_seed(seed)
    curve, lrs = [], []
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=gen).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
        with torch.no_grad():
            curve.append(float(torch.nn.functional.cross_entropy(model(Xtr), ytr)))
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
    loss = curve[-1] if np.isfinite(curve[-1]) else float("inf")
    return {"loss": loss, "acc": acc, "curve": curve, "lrs": lrs,
            "norms": recorder.norms if recorder else None}


def run_task(task, seeds, epochs, data, names=None, batch=BATCH):
    """The best lr of each schedule (``names``: a subset) and the refined schedule, over seeds."""
    _, _, grid = {**TASKS, **LONG_TASKS}[task]
    total = epochs * -(-len(data[1]) // batch)
    results = {}  # (schedule, lr) -> list of runs over seeds
    for name, make in schedules(total).items():
        if names is not None and name not in names:
            continue
        progress(f"{task} / {name}: lrs {grid}, seeds {list(seeds)}")
        for lr in grid:
            results[(name, lr)] = [train(task, lr, make, s, epochs, data, record=name == "linear decay", batch=batch)
                                   for s in seeds]
    progress(f"{task} / {REFINED}: lrs {grid}, seeds {list(seeds)}")
    for lr in grid:
        runs = []
        for s, source in zip(seeds, results[("linear decay", lr)]):
            norms = source["norms"]
            if not np.all(np.isfinite(norms) & (norms > 0)):
                runs.append({"loss": float("inf"), "acc": 0.0, "curve": [float("inf")] * epochs, "lrs": []})
                continue
            runs.append(train(task, lr, lambda opt, n=norms: RefinedSchedule(opt, grad_norms=n),
                              s, epochs, data, batch=batch))
            runs[-1]["norms"] = norms
        results[(REFINED, lr)] = runs
    best = {}
    for (name, lr), runs in results.items():
        mean = statistics.fmean(r["loss"] for r in runs)
        if name not in best or mean < best[name][1]:
            best[name] = (lr, mean, runs)
    return best


def spread(xs):
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def norm_shape(norms) -> tuple[float, float]:
    """The recorded norms' shape: the median of the last 10% of steps over that of the first 10%,
    and the step-to-step noise, the median of |log(n_t+1 / n_t)|."""
    n = np.asarray(norms, dtype=float)
    tenth = max(1, len(n) // 10)
    return float(np.median(n[-tenth:]) / np.median(n[:tenth])), float(np.median(np.abs(np.diff(np.log(n)))))


def report(task, best, seeds, epochs, batch=BATCH):
    print(f"\n### {task}: {epochs} epochs, batch {batch}, seeds {list(seeds)}\n")
    print("| schedule | best lr | final train loss (mean ± sd) | test accuracy (mean ± sd) |")
    print("|---|---|---|---|")
    order = sorted(best, key=lambda n: best[n][1])
    for name in order:
        lr, _, runs = best[name]
        lm, ls = spread([r["loss"] for r in runs])
        am, asd = spread([r["acc"] for r in runs])
        print(f"| {name} | {lr:g} | {lm:.4f} ± {ls:.4f} | {am:.4f} ± {asd:.4f} |")
    winner = order[0]
    linear = best["linear decay"][1]
    versus = f" Linear decay vs cosine: {linear:.4f} vs {best['cosine'][1]:.4f};" if "cosine" in best else ""
    ends, noise = zip(*(norm_shape(r["norms"]) for r in best[REFINED][2] if r.get("norms") is not None))
    print(f"\nLowest training loss: {winner}.{versus} refined vs linear decay: "
          f"{best[REFINED][1]:.4f} vs {linear:.4f}. The gradient norms linear decay recorded (the refined "
          f"schedule's input, its best lr): last tenth over first tenth {statistics.fmean(ends):.2f}, "
          f"step-to-step |log change| {statistics.fmean(noise):.2f} (means over seeds).")


def plot(all_best, out):
    fig, axes = plt.subplots(2, len(all_best), figsize=(6 * len(all_best), 8), squeeze=False)
    for col, (task, best) in enumerate(all_best.items()):
        for name, (lr, _, runs) in best.items():
            if runs[0]["lrs"]:
                axes[0][col].plot(np.array(runs[0]["lrs"], dtype=float) / lr, label=name)
            curve = np.mean([r["curve"] for r in runs], axis=0)
            axes[1][col].semilogy(np.arange(1, len(curve) + 1), curve, label=f"{name} (lr {lr:g})")
        axes[0][col].set_title(f"{task}: lr / peak lr (seed 0)", fontsize=9)
        axes[0][col].set_xlabel("step")
        axes[1][col].set_title(f"{task}: training loss, mean over seeds", fontsize=9)
        axes[1][col].set_xlabel("epoch")
        for ax in axes[:, col]:
            ax.legend(fontsize=8)
    save_figure(fig, out, "schedules.png")


def main():
    args = cli(__doc__, "2 seeds, 4 epochs")
    torch.set_num_threads(1)
    seeds, epochs = ((0, 1), 4) if args.quick else ((0, 1, 2, 3, 4), 15)
    long_epochs = 3 if args.quick else 40
    data = digits_split()
    print(f"torch {torch.__version__}; digits: {len(data[1])} train / {len(data[3])} test")
    all_best = {}
    for task in TASKS:
        all_best[task] = run_task(task, seeds, epochs, data)
        report(task, all_best[task], seeds, epochs)
    plot(all_best, args.out)
    images, long_best = digit_images(), {}
    for task in LONG_TASKS:
        long_best[task] = run_task(task, seeds, long_epochs, images, names=("linear decay",), batch=LONG_BATCH)
        report(task, long_best[task], seeds, long_epochs, LONG_BATCH)

    def compare(first, second, tasks=all_best):
        """Per task, ``first`` lower than ``second`` (final training loss, best lr each, paired by seed)."""
        cases = {task: paired_verdict([r["loss"] for r in best[first][2]], [r["loss"] for r in best[second][2]])
                 for task, best in tasks.items()}
        return "; ".join(f"{t}: {text}" for t, (_, text) in cases.items()), all_verdicts(v for v, _ in cases.values())

    record(args.out, "schedules", [
        claim("linear decay beats cosine (final training loss, best lr each)",
              "Defazio, Cutkosky, Mehta & Mishchenko, arXiv:2310.07831", *compare("linear decay", "cosine")),
        claim("the refined schedule improves on linear decay",
              "Defazio, Cutkosky, Mehta & Mishchenko, arXiv:2310.07831", *compare(REFINED, "linear decay")),
        claim(f"on a longer, noisier run (CNN, {long_epochs} epochs, SGD and Adam) the refined schedule "
              "improves on linear decay", "Defazio, Cutkosky, Mehta & Mishchenko, arXiv:2310.07831",
              *compare(REFINED, "linear decay", long_best)),
    ], raw={task: {name: {"lr": b[0], "loss": [r["loss"] for r in b[2]], "acc": [r["acc"] for r in b[2]],
                          "curves": [r["curve"] for r in b[2]]} for name, b in best.items()}
            for task, best in {**all_best, **long_best}.items()})


if __name__ == "__main__":
    main()
