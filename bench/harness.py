"""What every benchmark question shares: its command line, how it saves a figure, and how it
records the paper's claim beside the measured figure (read by ``python -m bench``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch


def cli(doc: str, quick_help: str, **extra) -> argparse.Namespace:
    """``--quick``, ``--out`` (created), ``--seed`` (the global torch seed) and any ``extra``
    options (name -> ``add_argument`` kwargs), with the script's docstring as its description."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--seed", type=int, default=0)
    for name, kwargs in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", **kwargs)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    return args


def run_workers(source: str, world: int, *args, timeout: float = 1800):
    """Run ``source`` (a Python script) as ``world`` processes on this machine, each given
    ``rank world rendezvous-file out-file *args``; rank 0 writes its results as JSON to the out
    file, returned here. A failed rank raises with the end of its output."""
    import json
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        script, out = os.path.join(tmp, "worker.py"), os.path.join(tmp, "out.json")
        with open(script, "w") as fh:
            fh.write(source)
        procs = [subprocess.Popen([sys.executable, script, str(r), str(world), os.path.join(tmp, "rdv"), out,
                                   *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for r in range(world)]
        for p in procs:
            text, _ = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(text.decode()[-3000:])
        with open(out) as fh:
            return json.load(fh)


def progress(message: str) -> None:
    """A progress line on stderr (``python -m bench`` shows it live, with the elapsed time, and
    keeps it out of the report)."""
    print(f"progress: {message}", file=sys.stderr, flush=True)


def save_figure(fig, out: str, name: str, dpi: int = 110) -> str:
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=dpi)
    print(f"\nplot: {path}")
    return path


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if hasattr(value, "tolist"):  # numpy
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def record(out: str, question: str, claims: list[dict], raw=None) -> None:
    """Write ``<question>.claims.json`` (each claim: ``claim``, ``source``, ``measured``, ``held``:
    True / False / None when the run cannot decide) and ``<question>.json`` (raw results)."""
    with open(os.path.join(out, f"{question}.claims.json"), "w") as fh:
        json.dump(_plain(claims), fh, indent=1)
    if raw is not None:
        with open(os.path.join(out, f"{question}.json"), "w") as fh:
            json.dump(_plain(raw), fh)


def paired_verdict(a, b, *, resamples: int = 10_000, seed: int = 0):
    """The rule fixed before every run for "``a`` is lower than ``b``" over seeds: the paired
    differences ``a_s - b_s`` (the same seed: the same initialisation and data order), and a 95%
    percentile-bootstrap interval of their mean. True where the interval lies below 0, False where
    it lies above 0, None ("not shown") where it holds 0. Returns ``(verdict, text)``, the text
    with each side's mean ± sd and the interval."""
    import numpy as np
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    verdict = True if hi < 0 else False if lo > 0 else None
    sd = lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0  # noqa: E731
    text = (f"{a.mean():.4f} ± {sd(a):.4f} vs {b.mean():.4f} ± {sd(b):.4f} (n = {len(d)} seeds; "
            f"paired difference 95% CI [{lo:.4f}, {hi:.4f}])")
    return verdict, text


def all_verdicts(verdicts) -> bool | None:
    """Several cases of one claim: held if every case held, refuted if any was refuted, else not
    shown."""
    verdicts = list(verdicts)
    if any(v is False for v in verdicts):
        return False
    return True if all(v is True for v in verdicts) else None


def claim(text: str, source: str, measured: str, held) -> dict:
    return {"claim": text, "source": source, "measured": measured,
            "held": None if held is None else bool(held)}
