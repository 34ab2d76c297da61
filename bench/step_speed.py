"""Median time of one optimizer step: torchopt_zoo vs torch.optim (for-loop, foreach, fused) vs
pytorch_optimizer, on a workload of 48 large tensors and one of 3,200 small tensors.

Every row is measured in this run, on this machine; ratios are to torch's fused Adam on the same
workload (> 1 means slower than it). Bytes per parameter (docs/algorithms.md section 7) give the
memory-traffic floor of each update: the fraction of that floor a step reaches uses the measured
device-to-device copy bandwidth. Only ``step()`` is timed. Before each step the gradients arrive as
a backward pass delivers them after ``zero_grad(set_to_none=False)``: added in place into the
existing ``p.grad`` (for the zoo's fused tier those are views of its flat gradient buffer, so the
step reads them where they are). The row "gradients copied in" gives the zoo fresh gradient tensors
instead (a loop with ``zero_grad()``), which its fused step copies into the flat buffer.

    python bench/step_speed.py [--device cpu|cuda] [--repeats 30] [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from harness import claim, cli, record  # noqa: E402

import torchopt_zoo as zoo  # noqa: E402

try:
    import pytorch_optimizer as po
except ImportError:  # the peer is optional
    po = None

# Every registered rule with its defaults, with the floor bytes per fp32 parameter its module declares
# (docs/algorithms.md section 7), plus two variants: their floor is the rule's plus 8 bytes (one
# more state buffer read and written).
ZOO_ROWS = {cls.__name__: (lambda p, fe, cls=cls: cls(p, foreach=fe), cls.rule.floor_bytes) for cls in zoo.OPTIMIZERS}
ZOO_ROWS["AMSGrad"] = (lambda p, fe: zoo.Adam(p, amsgrad=True, foreach=fe), zoo.Adam.rule.floor_bytes + 8)
ZOO_ROWS["GD (heavy ball)"] = (lambda p, fe: zoo.GD(p, lr=1e-3, momentum=0.9, foreach=fe), zoo.GD.rule.floor_bytes + 8)
# BregmanAccelerated (order 2, Euclidean): x = lerp(y, z, tau) reads z, y and writes p; the update
# reads p, g, z and writes z, y, p
BYTES_PER_PARAM = {**{name: floor for name, (_, floor) in ZOO_ROWS.items()}, "BregmanAccelerated": 36}

ZOO_DEFAULT = "zoo default (fused)"
COPIED_IN = "zoo default (fused), gradients copied in"

WORKLOADS = {
    # name: (count, numel) per device
    "cpu": {"48 large": (48, 1 << 18), "3,200 small": (3200, 320)},
    "cuda": {"48 large": (48, 1 << 24), "3,200 small": (3200, 21_250)},
}


class _ClosureStep:
    """An optimizer whose ``step`` needs a closure, stepped with one that only returns the loss:
    the gradients are already in ``p.grad``, as for the other rows."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none)

    def step(self):
        return self.optimizer.step(lambda: torch.zeros(()))


def _bregman(fused):
    return lambda p: _ClosureStep(zoo.BregmanAccelerated(p, L=1e3, fused=fused))


def candidates():
    """(optimizer, implementation, factory) rows; factories take a list of parameters."""
    rows = [
        ("Adam", "torch for-loop", lambda p: torch.optim.Adam(p, foreach=False)),
        ("Adam", "torch foreach", lambda p: torch.optim.Adam(p, foreach=True)),
        ("Adam", "torch fused", lambda p: torch.optim.Adam(p, fused=True)),
        ("Adam", "zoo reference", lambda p: zoo.Adam(p, foreach=False)),
        ("AdamW", "torch fused", lambda p: torch.optim.AdamW(p, fused=True)),
        ("AMSGrad", "torch foreach", lambda p: torch.optim.Adam(p, amsgrad=True, foreach=True)),
        ("Adagrad", "torch foreach", lambda p: torch.optim.Adagrad(p, foreach=True)),
        ("RMSprop", "torch foreach", lambda p: torch.optim.RMSprop(p, foreach=True)),
        ("GD (heavy ball)", "torch foreach", lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True)),
    ]
    for name, (make, _) in ZOO_ROWS.items():
        rows.append((name, "zoo foreach (lists)", lambda p, make=make: make(p, True)))
        rows.append((name, ZOO_DEFAULT, lambda p, make=make: make(p, None)))
        if name == "Adam":
            rows.append((name, COPIED_IN, lambda p, make=make: make(p, None)))
    rows += [("BregmanAccelerated", "zoo tensor lists", _bregman(False)),
             ("BregmanAccelerated", ZOO_DEFAULT, _bregman(None))]
    if po is not None:
        rows += [
            ("AdaBelief", "pytorch_optimizer", lambda p: po.AdaBelief(p, weight_decouple=False)),
            ("AdaBelief", "pytorch_optimizer foreach",
             lambda p: po.AdaBelief(p, weight_decouple=False, foreach=True)),
            ("DiffGrad", "pytorch_optimizer", lambda p: po.DiffGrad(p, weight_decouple=False)),
            ("DiffGrad", "pytorch_optimizer foreach",
             lambda p: po.DiffGrad(p, weight_decouple=False, foreach=True)),
        ]
    order = list(dict.fromkeys(r[0] for r in rows))
    return sorted(rows, key=lambda r: order.index(r[0]))


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(factory, count, numel, device, repeats, copied_in=False, warmup=3):
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(numel, device=device, generator=gen).requires_grad_() for _ in range(count)]
    fresh = [torch.randn(numel, device=device, generator=gen) * 1e-2 for _ in range(count)]
    opt = factory(params)

    def backward():  # outside the timed region
        if copied_in:
            for p, g in zip(params, fresh):
                p.grad = g
            return
        opt.zero_grad(set_to_none=False)
        for p, g in zip(params, fresh):
            if p.grad is None:
                p.grad = g.clone()
        torch._foreach_add_([p.grad for p in params], fresh)

    times = []
    for i in range(warmup + repeats):
        backward()
        sync(device)
        t0 = time.perf_counter()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])


def copy_bandwidth(numel, device, repeats=10):
    """Device-to-device copy bandwidth in bytes/s (read + write)."""
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 8 * numel / statistics.median(times)


def compiled_traffic(arch=90):
    """Bytes per parameter each zoo rule's fused step moves as Triton compiles it for ``sm_<arch>``
    (an H100 for 90), read from the PTX without a GPU (``torchopt_zoo.tiers.codegen``):
    ``{name: (bytes, all per-element accesses 128-bit)}``. Empty where Triton cannot compile here."""
    try:
        from torchopt_zoo.tiers import codegen as triton_codegen
    except ImportError:
        print("\n(Triton is not installed: no compiled-kernel table)")
        return {}
    print(f"\n### The fused kernels as Triton compiles them for sm_{arch}, read from the PTX (no GPU needed)\n")
    print("| optimizer | floor (bytes/param, fp32) | compiled (bytes/param) | per-element accesses 128-bit "
          "| launches |")
    print("|---|---|---|---|---|")
    result = {}
    try:
        for name, (make, _) in ZOO_ROWS.items():
            params = [torch.randn(320, requires_grad=True) for _ in range(4)]
            opt = make(params, None)
            for p in params:
                p.grad = torch.randn_like(p)
            traffic = triton_codegen.optimizer_traffic(opt, arch)[1]
            moved = sum(t.bytes_per_element for t in traffic)
            # per-element accesses all 128-bit; scalar loads only of the step and the rule's 0-dim state
            wide = all(t.scalar_stores == 0 and t.scalar_loads <= 1 + len(opt.rule.scalar_state) for t in traffic)
            result[name] = (moved, wide)
            print(f"| {name} | {BYTES_PER_PARAM[name]} | {moved:g} | {'yes' if wide else 'no'} | {len(traffic)} |")
    except RuntimeError as e:  # e.g. TRITON_INTERPRET=1 in this process
        print(f"(cannot compile here: {e})")
    return result


def main(device="cpu", repeats=30, quick=False):
    torch.manual_seed(0)
    rows = candidates()
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    results, fractions = {}, {}
    for wname, (count, numel) in WORKLOADS[device].items():
        if quick:
            count, numel = max(count // 8, 1), max(numel // 8, 1)
        n_params = count * numel
        bw = copy_bandwidth(n_params, device)
        fused_adam = None
        print(f"\n### {wname} tensors: {count} x {numel:,} = {n_params / 1e6:.1f}M parameters "
              f"(copy bandwidth {bw / 1e9:.1f} GB/s)\n")
        print("| optimizer | implementation | median step (ms) | fraction of floor | x torch fused Adam |")
        print("|---|---|---|---|---|")
        for name, impl, factory in rows:
            try:
                t = time_step(factory, count, numel, device, repeats, copied_in=impl == COPIED_IN)
            except (RuntimeError, TypeError, ValueError) as e:  # e.g. fused unsupported on this device
                print(f"| {name} | {impl} | n/a ({type(e).__name__}) | | |")
                continue
            if (name, impl) == ("Adam", "torch fused"):
                fused_adam = t
            floor = BYTES_PER_PARAM[name] * n_params / bw
            ratio = f"{t / fused_adam:.2f}" if fused_adam else ""
            results[(wname, name, impl)] = t
            fractions[(wname, name, impl)] = floor / t
            print(f"| {name} | {impl} | {t * 1e3:.2f} | {floor / t:.2f} | {ratio} |")
    print("\nchecks:")
    for wname in WORKLOADS[device]:
        t = results.get((wname, "Adam", "torch foreach"))
        for impl in ("zoo foreach (lists)", ZOO_DEFAULT):
            z = results.get((wname, "Adam", impl))
            if z and t:
                print(f"  {wname}: {impl} Adam / torch foreach Adam = {z / t:.2f} (target: <= 1)")
        fused_adam = results.get((wname, "Adam", "torch fused"))
        z = results.get((wname, "Adam", ZOO_DEFAULT))
        if z and fused_adam and device == "cpu":
            target = 0.5 if "small" in wname else 1.1
            print(f"  {wname}: zoo Adam / torch fused Adam = {z / fused_adam:.2f} (target, CPU: <= {target})")
        if device == "cuda":
            for (w, name, impl), floor in fractions.items():
                if w == wname and impl == ZOO_DEFAULT:
                    print(f"  {wname}: zoo {name} reaches {floor:.2f} of the floor (target, CUDA: >= 0.95)")
        for name in ("DiffGrad", "AdaBelief"):
            z = results.get((wname, name, ZOO_DEFAULT))
            peers = [v for (w, n, i), v in results.items() if w == wname and n == name and "pytorch_optimizer" in i]
            if z and peers:
                print(f"  {wname}: fastest pytorch_optimizer {name} / zoo {name} = {min(peers) / z:.1f}x "
                      "(target: >= 3 on 3,200 small)")
    return results, fractions


def cli_main():
    a = cli(__doc__, "workloads 64x smaller, for smoke runs",
            device=dict(choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"),
            repeats=dict(type=int, default=30))
    results, fractions = main(a.device, a.repeats, a.quick)
    traffic = compiled_traffic()
    small = next(w for w in WORKLOADS[a.device] if "small" in w)
    zoo_adam = results.get((small, "Adam", ZOO_DEFAULT))
    torch_foreach = results.get((small, "Adam", "torch foreach"))
    claims = [claim("the zoo's multi-tensor Adam is not slower than torch's foreach Adam",
                    "target", f"{small}: {zoo_adam / torch_foreach:.2f}x torch foreach",
                    zoo_adam <= torch_foreach)]
    if a.device == "cpu":
        for wname, target in ((small, 0.5), (next(w for w in WORKLOADS["cpu"] if "large" in w), 1.1)):
            z, f = results.get((wname, "Adam", ZOO_DEFAULT)), results.get((wname, "Adam", "torch fused"))
            if z and f:
                claims.append(claim(f"on CPU the zoo's Adam takes at most {target}x torch's fused Adam ({wname})",
                                    "target", f"{z / f:.2f}x", z / f <= target))
    if a.device == "cuda":
        for (wname, name, impl), frac in fractions.items():
            if impl == ZOO_DEFAULT:
                claims.append(claim(f"on CUDA zoo {name} reaches 0.95 of the bandwidth floor ({wname})",
                                    "target", f"{frac:.2f}", frac >= 0.95))
    if traffic:
        off = [n for n, (moved, wide) in traffic.items() if moved != BYTES_PER_PARAM[n] or not wide]
        claims.append(claim("every fused kernel, compiled for sm_90, moves exactly the floor's bytes per parameter "
                            "with 128-bit accesses", "floor bytes (docs/algorithms.md section 7)",
                            f"{len(traffic) - len(off)} of {len(traffic)} rules"
                            + (f" (not: {', '.join(off)})" if off else ""),
                            not off))
    for name in ("DiffGrad", "AdaBelief"):
        z = results.get((small, name, ZOO_DEFAULT))
        peers = [v for (w, n, i), v in results.items() if w == small and n == name and "pytorch_optimizer" in i]
        if z and peers:
            claims.append(claim(f"zoo {name} is at least 3x faster than pytorch_optimizer's on many small tensors",
                                "target", f"{min(peers) / z:.1f}x ({a.device})", min(peers) / z >= 3))
    raw = {" / ".join(k): v for k, v in results.items()}
    raw.update({f"compiled sm_90 bytes / {n}": moved for n, (moved, _) in traffic.items()})
    record(a.out, "step_speed", claims, raw=raw)


if __name__ == "__main__":
    cli_main()
