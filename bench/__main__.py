"""``python -m bench``: every benchmark question on data that ships with the installed packages.

Each question is a script in this folder; the suite runs them one after another (a crash in one
does not stop the others, but makes the exit status non-zero), shows progress, and writes into
``--out``: ``report.md`` (a summary table with each paper's claim, the measured figure and whether
it held, then every question's tables and plots), the PNG plots, each question's raw results as
JSON (``<name>.json``, ``<name>.claims.json``) and its log.

    python -m bench [--quick] [--only linesearch,schedules] [--device cpu|cuda] [--seed 0] [--out bench/out]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> title (the order of the report)
QUESTIONS = {
    "wilson2017": "The marginal value of adaptive methods (Wilson et al.)",
    "linesearch": "Adaptive vs regular backtracking (Cavalcanti, Lessard & Wilson)",
    "accelerated": "Bregman-Lagrangian accelerated rates (Wibisono, Wilson & Jordan)",
    "diffgrad": "diffGrad vs Adam on a small CNN (Dubey et al.)",
    "batch_growth": "Adaptive batch sizes (AdAdaGrad, Lau, Liu & Kolar)",
    "compression": "Error feedback: bits to accuracy (EF14, EF21, EF21-W, EControl)",
    "distributed": "FSDP2 and the DDP hooks in 2 processes",
    "schedules": "Linear decay vs cosine vs refinement (Defazio et al.)",
    "step_speed": "Step speed vs torch.optim and pytorch_optimizer",
}


PROGRESS = "progress: "


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run sizes (a few minutes on 2 CPU cores)")
    parser.add_argument("--only", default="", help="comma-separated question names: " + ", ".join(QUESTIONS))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="device for the step-speed question (the others run on the CPU)")
    parser.add_argument("--seed", type=int, default=0, help="global torch seed of every question")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--readme", default="",
                        help="a README whose claims table (between the claims markers) this run rewrites; "
                             "full runs of every question only")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(QUESTIONS)
    unknown = [n for n in names if n not in QUESTIONS]
    if unknown:
        parser.error(f"unknown question(s) {', '.join(unknown)}; choose from {', '.join(QUESTIONS)}")
    args.names = names
    return args


def run_question(name: str, args) -> dict:
    cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), "--out", args.out, "--seed", str(args.seed)]
    if args.quick:
        cmd.append("--quick")
    if name == "step_speed":
        cmd += ["--device", args.device]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []

    def echo_progress():  # a question's progress lines (harness.progress) as they come, with the elapsed time
        for line in proc.stderr:
            stderr.append(line)
            if line.startswith(PROGRESS):
                print(f"\n    {time.perf_counter() - start:5.0f} s  {line[len(PROGRESS):].strip()}", end="", flush=True)
    reader = threading.Thread(target=echo_progress)
    reader.start()
    stdout = proc.stdout.read()
    proc.wait()
    reader.join()
    proc.stdout, proc.stderr = stdout, "".join(l for l in stderr if not l.startswith(PROGRESS))  # noqa: E741
    seconds = time.perf_counter() - start
    with open(os.path.join(args.out, f"{name}.log"), "w") as fh:
        fh.write(proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else ""))
    claims_path = os.path.join(args.out, f"{name}.claims.json")
    claims = []
    if proc.returncode == 0 and os.path.exists(claims_path):
        with open(claims_path) as fh:
            claims = json.load(fh)
    shown = any(line.startswith(PROGRESS) for line in stderr)
    return {"name": name, "ok": proc.returncode == 0 and bool(claims), "seconds": seconds, "shown": shown,
            "stdout": proc.stdout, "stderr": proc.stderr, "claims": claims}


def held_text(held) -> str:
    return {True: "yes", False: "**no**", None: "not shown"}[held]


BEGIN, END = "<!-- claims table: written by python -m bench --readme; do not edit -->", "<!-- end of claims table -->"


def claims_table(claims_by_question: dict[str, list[dict]]) -> str:
    """The README's headline table: each claim and its verdict (the figures: the report)."""
    lines = [BEGIN, "", "| question | claim | held |", "|---|---|---|"]
    for name, claims in claims_by_question.items():
        lines += [f"| {name} | {c['claim']} | {held_text(c['held'])} |" for c in claims]
    return "\n".join(lines + ["", END])


def rewrite_readme(path: str, claims_by_question: dict[str, list[dict]]) -> None:
    with open(path) as fh:
        text = fh.read()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    with open(path, "w") as fh:
        fh.write(text[:start] + claims_table(claims_by_question) + text[stop:])


def report(results: list[dict], args) -> str:
    import torch
    lines = ["# torchopt_zoo benchmark report", "",
             f"{datetime.date.today()} · {'quick' if args.quick else 'full'} run · torch {torch.__version__} · "
             f"device for step speed: {args.device} · seed {args.seed}", "",
             "## The papers' claims, measured", "",
             "| question | claim | source | measured | held |", "|---|---|---|---|---|"]
    for r in results:
        if not r["ok"]:
            lines.append(f"| {r['name']} | (the question crashed: see {r['name']}.log) | | | **crashed** |")
        for c in r["claims"]:
            lines.append(f"| {r['name']} | {c['claim']} | {c['source']} | {c['measured']} | {held_text(c['held'])} |")
    lines.append("")
    for r in results:
        lines += [f"## {QUESTIONS[r['name']]} — `bench/{r['name']}.py`", "",
                  f"{r['seconds']:.0f} s{'' if r['ok'] else ' · CRASHED'}", ""]
        for line in r["stdout"].splitlines():
            if line.startswith("plot: "):
                path = line[len("plot: "):].strip()
                lines += ["", f"![{r['name']}]({os.path.relpath(path, args.out)})", ""]
            else:
                lines.append(line)
        if not r["ok"]:
            lines += ["", "```", r["stderr"][-3000:], "```"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = []
    total = len(args.names)
    for i, name in enumerate(args.names, 1):
        print(f"[{i}/{total}] {name} ...", end=" ", flush=True)
        r = run_question(name, args)
        results.append(r)
        held = [c["held"] for c in r["claims"]]
        print(("\n    " if r["shown"] else "") + f"{'ok' if r['ok'] else 'CRASHED'} in {r['seconds']:.0f} s"
              + (f" ({sum(h is True for h in held)}/{len(held)} claims held)" if held else ""), flush=True)
    path = os.path.join(args.out, "report.md")
    with open(path, "w") as fh:
        fh.write(report(results, args))
    crashed = [r["name"] for r in results if not r["ok"]]
    if args.readme and not args.quick and not crashed and args.names == list(QUESTIONS):
        rewrite_readme(args.readme, {r["name"]: r["claims"] for r in results})
        print(f"claims table: {args.readme}")
    print(f"report: {path}" + (f"; crashed: {', '.join(crashed)}" if crashed else ""))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
