"""Median time of one optimizer step: torchopt_zoo vs torch.optim (for-loop, foreach, fused) vs
pytorch_optimizer, on a workload of 48 large tensors and one of 3,200 small tensors.

Every row is measured in this run, on this machine. Only ``step()`` is timed. The first table is
the **default training loop**: ``opt.zero_grad()`` sets the gradients to None and the backward pass
hands the step new gradient tensors. It gives each step's time as a ratio to torch's fused Adam
(timed again right before each row, so the machine's drift over the table stays out of the
ratios), and its time per floor byte (docs/algorithms.md section 7: the bytes per parameter one pass must
move) relative to torch's fused Adam's. The second table is the opt-in flat buffers
(``fused="flat"``) in the loop they are made for, ``zero_grad(set_to_none=False)``, where gradients
accumulate into the flat gradient buffer; torch's fused Adam is timed in that loop too. Then the
host cost per tensor of the CUDA path (address tables checked, kernel arguments prepared; measured
on CPU tensors, nothing launched), ``torch.compile`` of the step (zoo Adam vs torch's Adam, both
compiled: time, graphs, graph breaks) and the bytes per parameter every kernel moves as Triton compiles
it for sm_90 (read from the PTX, no GPU needed).

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

# Every registered rule with its defaults, with the floor bytes per fp32 parameter its module
# declares, plus two variants whose floor is the rule's plus 8 bytes (one more state buffer).
ZOO_ROWS = {cls.__name__: (lambda p, cls=cls, **kw: cls(p, **kw), cls.rule.floor_bytes) for cls in zoo.OPTIMIZERS}
ZOO_ROWS["AMSGrad"] = (lambda p, **kw: zoo.Adam(p, amsgrad=True, **kw), zoo.Adam.rule.floor_bytes + 8)
ZOO_ROWS["GD (heavy ball)"] = (lambda p, **kw: zoo.GD(p, lr=1e-3, momentum=0.9, **kw), zoo.GD.rule.floor_bytes + 8)
FLOOR = {name: floor for name, (_, floor) in ZOO_ROWS.items()}

TORCH_ROWS = [  # (optimizer, implementation, factory): torch.optim's own, as a user would pick them
    ("Adam", "torch for-loop", lambda p: torch.optim.Adam(p, foreach=False)),
    ("Adam", "torch foreach", lambda p: torch.optim.Adam(p, foreach=True)),
    ("AdamW", "torch fused", lambda p: torch.optim.AdamW(p, fused=True)),
    ("AMSGrad", "torch fused", lambda p: torch.optim.Adam(p, amsgrad=True, fused=True)),
    ("Adagrad", "torch fused", lambda p: torch.optim.Adagrad(p, fused=True)),
    ("RMSprop", "torch foreach", lambda p: torch.optim.RMSprop(p, foreach=True)),
    ("GD (heavy ball)", "torch fused", lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True)),
    ("NAdam", "torch foreach", lambda p: torch.optim.NAdam(p, foreach=True)),
    ("RAdam", "torch foreach", lambda p: torch.optim.RAdam(p, foreach=True)),
    ("Adamax", "torch foreach", lambda p: torch.optim.Adamax(p, foreach=True)),
    ("Adadelta", "torch foreach", lambda p: torch.optim.Adadelta(p, foreach=True)),
]
TORCH_FUSED_ADAM = ("Adam", "torch fused", lambda p: torch.optim.Adam(p, fused=True))
ZOO_DEFAULT, ZOO_FLAT = "zoo default", 'zoo fused="flat"'

WORKLOADS = {
    # name: (count, numel) per device
    "cpu": {"48 large": (48, 1 << 18), "3,200 small": (3200, 320)},
    "cuda": {"48 large": (48, 1 << 24), "3,200 small": (3200, 21_250)},
}


def default_loop_rows():
    rows = [TORCH_FUSED_ADAM, *TORCH_ROWS]
    rows += [(name, ZOO_DEFAULT, lambda p, make=make: make(p)) for name, (make, _) in ZOO_ROWS.items()]
    if po is not None:
        rows += [("AdaBelief", "pytorch_optimizer foreach", lambda p: po.AdaBelief(p, weight_decouple=False, foreach=True)),
                 ("DiffGrad", "pytorch_optimizer foreach", lambda p: po.DiffGrad(p, weight_decouple=False, foreach=True)),
                 ("Lion", "pytorch_optimizer foreach", lambda p: po.Lion(p, foreach=True))]
    order = list(ZOO_ROWS)
    return sorted(rows, key=lambda r: (r[:2] != TORCH_FUSED_ADAM[:2], order.index(r[0]), r[1] != ZOO_DEFAULT))


def flat_rows():
    return [TORCH_FUSED_ADAM] + [(name, ZOO_FLAT, lambda p, make=make: make(p, fused="flat"))
                                 for name, (make, _) in ZOO_ROWS.items()]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def stepper(factory, count, numel, device, set_to_none=True):
    """A function that takes one ``step()`` of ``factory``'s optimizer over ``count`` tensors of
    ``numel`` and returns its seconds. ``set_to_none``: each step gets new gradient tensors, as
    ``zero_grad()`` then ``backward()`` hand them over; else they are accumulated into the
    existing ``p.grad``, as after ``zero_grad(set_to_none=False)``."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(numel, device=device, generator=gen).requires_grad_() for _ in range(count)]
    fresh = [torch.randn(numel, device=device, generator=gen) * 1e-2 for _ in range(count)]
    opt = factory(params)

    def one() -> float:
        opt.zero_grad(set_to_none=set_to_none)  # outside the timed region, as the backward pass
        if set_to_none:
            for p, g in zip(params, fresh):
                p.grad = g.clone()
        else:
            for p, g in zip(params, fresh):
                if p.grad is None:
                    p.grad = g.clone()
            torch._foreach_add_([p.grad for p in params], fresh)
        sync(device)
        t0 = time.perf_counter()
        opt.step()
        sync(device)
        return time.perf_counter() - t0
    return one


def time_against(base_factory, factory, count, numel, device, repeats, set_to_none=True, warmup=3):
    """``(median seconds of factory's step, median of its per-step ratio to base_factory's)``, the
    two optimizers stepping in alternation, so a slow spell of the machine hits both."""
    base, row = (stepper(f, count, numel, device, set_to_none) for f in (base_factory, factory))
    times, ratios = [], []
    for i in range(warmup + repeats):
        b, t = base(), row()
        if i >= warmup:
            times.append(t)
            ratios.append(t / b)
    return statistics.median(times), statistics.median(ratios)


def timed_table(title, rows, workloads, device, repeats, set_to_none):
    """Print one table per workload; ``{(workload, optimizer, implementation): x torch fused Adam}``.
    Each row steps in alternation with torch's fused Adam, and its ratio is the median of the
    per-step ratios (:func:`time_against`): a slow spell of the machine does not enter it."""
    results = {}
    for wname, (count, numel) in workloads.items():
        print(f"\n### {title}: {wname} tensors, {count} x {numel:,} = {count * numel / 1e6:.1f}M parameters\n")
        print("| optimizer | implementation | median step (ms) | x torch fused Adam | time per floor byte, x torch fused Adam's |")
        print("|---|---|---|---|---|")
        for name, impl, factory in rows:
            try:
                t, ratio = time_against(TORCH_FUSED_ADAM[2], factory, count, numel, device, repeats, set_to_none)
            except (RuntimeError, TypeError, ValueError) as e:  # e.g. a fused kernel missing on this device
                print(f"| {name} | {impl} | n/a ({type(e).__name__}) | | |")
                continue
            results[(wname, name, impl)] = ratio
            per_byte = ratio * FLOOR["Adam"] / FLOOR[name]
            print(f"| {name} | {impl} | {t * 1e3:.2f} | {ratio:.2f} | {per_byte:.2f} |")
    return results


def compiled_step(device, quick, repeats):
    """``torch.compile`` of ``opt.step()`` as torch documents it, zoo Adam and torch's Adam on one
    MLP each: median eager and compiled step (the two optimizers timed in alternation, so both see
    the same machine), and the graphs and graph breaks dynamo made over the first 12 steps (the
    first one included). ``{optimizer: (eager s, compiled s, graphs, breaks)}``."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    width, depth = (128, 4) if quick else (512, 8)
    rows = {"torch Adam": torch.optim.Adam, "zoo Adam": zoo.Adam}
    print(f"\n### torch.compile of the step: Adam on an MLP of {depth} x Linear({width}, {width})\n")
    print("| optimizer | eager step (ms) | compiled step (ms) | graphs | graph breaks | compiled, x torch's compiled |")
    print("|---|---|---|---|---|---|")
    steps, counts = {}, {}
    for name, cls in rows.items():
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)]).to(device)
        model(torch.randn(32, width, device=device)).sum().backward()
        opt = cls(model.parameters(), lr=1e-3)
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(opt.step)
        try:
            for _ in range(12):
                compiled()
        except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for inductor on this machine
            print(f"| {name} | n/a ({type(e).__name__}: {str(e)[:60]}) | | | | |")
            return {}
        counts[name] = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))
        steps[name] = {"eager": opt.step, "compiled": compiled}
    times = {(name, label): [] for name in rows for label in ("eager", "compiled")}
    for _ in range(repeats):
        for label in ("eager", "compiled"):
            for name in rows:
                sync(device)
                t0 = time.perf_counter()
                steps[name][label]()
                sync(device)
                times[(name, label)].append(time.perf_counter() - t0)
    out = {}
    for name in rows:
        eager, comp = (statistics.median(times[(name, label)]) for label in ("eager", "compiled"))
        out[name] = (eager, comp, *counts[name])
        ratio = comp / statistics.median(times[("torch Adam", "compiled")])
        print(f"| {name} | {eager * 1e3:.3f} | {comp * 1e3:.3f} | {counts[name][0]} | {counts[name][1]} | {ratio:.2f} |")
    return out


def host_cost_per_tensor(count=3200, numel=320, repeats=20, scattered=False):
    """Seconds per tensor of the CUDA path's host work in a steady loop (the step's check that the
    group's table still holds its parameters, state and gradients, the new gradients' addresses
    uploaded, the launch arguments built: ``TableBucket.holds`` and ``triton.launches``), measured
    on CPU tensors with nothing launched, for the compiled check (``tiers/host.py``) and its Python
    reference, with the gradients at new addresses each step (as ``zero_grad()`` to None and
    ``backward()`` hand them over on CPU) and at the same addresses (the CUDA caching allocator's
    usual case); a rebuild (new addresses everywhere); and, as the floor of any check made through
    torch's Python API, reading each parameter's address, its gradient and the gradient's address.
    ``scattered``: the tensors are made in a heap with 100,000 holes (every other one of 200,000
    small tensors freed), so their objects lie apart as in a long-running process's heap and each
    read is a cache miss. ``{row: seconds per tensor}``; the compiled rows are missing where it
    cannot be built."""
    from torchopt_zoo.tiers import host
    from torchopt_zoo.tiers import table as _table
    from torchopt_zoo.tiers import triton as _triton

    # kept until the timing ends: every other one of 200,000 small tensors, whose freed neighbours
    # are the holes the tensors below are made in
    spacers = [torch.empty(int(n)) for n in torch.randint(1, 64, (200_000 if scattered else 0,))][::2]
    params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(count)]
    opt = zoo.Adam(params, foreach=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # the states exist
    group = opt.param_groups[0]
    _, grads, states, _ = opt._collect(group)
    bucket = _table.TableBucket.build(opt.rule, params, states)
    bucket.load(grads)
    checks = {"compiled": host.checker(wait=True), "python": None}
    times = {}

    def timed(row, work):
        t0 = time.perf_counter()
        work()
        times.setdefault(row, []).append(time.perf_counter() - t0)

    def check():
        assert bucket.holds(params, opt.state)
        _triton.launches(opt.rule, group, bucket, {}, None, None)

    def floor():
        list(map(torch.Tensor.data_ptr, params))
        list(map(torch.Tensor.data_ptr, [p.grad for p in params]))

    original = host.checker
    try:
        for _ in range(repeats):
            for name, compiled in checks.items():
                if name == "compiled" and compiled is None:
                    continue
                host.checker = lambda compiled=compiled: compiled
                for p in params:  # new gradient tensors, as backward() after zero_grad() hands them over
                    p.grad = torch.randn_like(p)
                timed(f"{name}, new gradients", check)
                timed(f"{name}, same gradients", check)
            for p in params:
                p.grad = torch.randn_like(p)
            timed("floor", floor)
            timed("rebuild", lambda: _table.TableBucket.build(opt.rule, params, states).load(grads))
    finally:
        host.checker = original
    del spacers
    return {row: statistics.median(t) / count for row, t in times.items()}


def cpu_step_cost_per_tensor(cls, count=3200, repeats=20):
    """Seconds per tensor of a whole step of ``cls`` (zoo Adam: the default tier; torch's Adam:
    ``fused=True``) on CPU over ``count`` one-element tensors with new gradients each step, where
    the kernels' own work is negligible: for the zoo, the same steady-state check as the CUDA path,
    the gradient column rewritten and one call of the C kernel."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(count)]
    opt = cls(params, fused=True) if cls is torch.optim.Adam else cls(params)
    times = []
    for i in range(repeats + 3):
        for p in params:
            p.grad = torch.randn(1)
        t0 = time.perf_counter()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / count


def compiled_traffic(arch=90):
    """Bytes per parameter each rule's step moves as Triton compiles it for ``sm_<arch>`` (an H100
    for 90), read from the PTX without a GPU (``torchopt_zoo.tiers.codegen``): over address tables
    (the default tier) and over flat buffers (opt-in). ``{name: (table bytes, flat bytes, flat
    accesses all 128-bit)}``; empty where Triton cannot compile here."""
    try:
        from torchopt_zoo.tiers import codegen
    except ImportError:
        print("\n(Triton is not installed: no compiled-kernel table)")
        return {}
    print(f"\n### The Triton kernels as compiled for sm_{arch}, read from the PTX (no GPU needed)\n")
    print("| optimizer | floor (bytes/param, fp32) | address tables (default) | flat buffers (opt-in) "
          "| flat: per-element accesses 128-bit | launches |")
    print("|---|---|---|---|---|---|")
    result = {}
    try:
        for name, (make, floor) in ZOO_ROWS.items():
            opts = []
            for fused in (None, "flat"):
                params = [torch.randn(320, requires_grad=True) for _ in range(4)]
                opts.append(make(params, fused=fused))
                for p in params:
                    p.grad = torch.randn_like(p)
            table = sum(codegen.table_traffic(opts[0], arch))
            flat = codegen.optimizer_traffic(opts[1], arch)[1]
            moved = sum(t.bytes_per_element for t in flat)
            # per-element accesses 128-bit; scalar loads only of the step and the rule's 0-dim state
            wide = all(t.scalar_stores == 0 and t.scalar_loads <= 1 + len(opts[1].rule.scalar_state) for t in flat)
            result[name] = (table, moved, wide)
            print(f"| {name} | {floor} | {table:g} | {moved:g} | {'yes' if wide else 'no'} | {len(flat)} |")
    except RuntimeError as e:  # e.g. TRITON_INTERPRET=1 in this process
        print(f"(cannot compile here: {e})")
    return result


def main(device="cpu", repeats=30, quick=False):
    torch.manual_seed(0)
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    workloads = {w: (max(c // 8, 1), max(n // 8, 1)) if quick else (c, n) for w, (c, n) in WORKLOADS[device].items()}
    default = timed_table("The default training loop (zero_grad() to None)", default_loop_rows(), workloads,
                          device, repeats, set_to_none=True)
    flat = timed_table('Opt-in flat buffers (fused="flat") in their loop, zero_grad(set_to_none=False)',
                       flat_rows(), workloads, device, repeats, set_to_none=False)
    return default, flat


def cli_main():
    a = cli(__doc__, "workloads 64x smaller, for smoke runs",
            device=dict(choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"),
            repeats=dict(type=int, default=30))
    from torchopt_zoo.tiers import host
    host.checker(wait=True)  # the compiled steady-state check from the first timed step (built once per machine)
    # first, in a fresh process: run after the timed tables, the compiled zoo step timed 1.45x
    # torch's in one full run against 1.07-1.11x in fresh processes (cause not found)
    compiled = compiled_step(a.device, a.quick, a.repeats)
    default, flat = main(a.device, a.repeats, a.quick)
    claims = []
    for wname in WORKLOADS[a.device]:
        for name in ("Adam", "AdamW"):
            z = default.get((wname, name, ZOO_DEFAULT))
            if z:
                claims.append(claim(f"default loop: zoo {name} takes at most 1.05x torch's fused Adam ({wname})",
                                    "target", f"{z:.2f}x ({a.device})", z <= 1.05))
        per_byte = {name: default[(wname, name, ZOO_DEFAULT)] * FLOOR["Adam"] / FLOOR[name]
                    for name in ZOO_ROWS if (wname, name, ZOO_DEFAULT) in default}
        if per_byte:
            slow = sorted((n for n, r in per_byte.items() if r > 1.3), key=per_byte.get)
            claims.append(claim(f"default loop: every rule's time per floor byte is at most 1.3x torch's fused Adam's "
                                f"({wname})", "target",
                                f"{len(per_byte) - len(slow)} of {len(per_byte)} rules"
                                + (f"; over: {', '.join(f'{n} {per_byte[n]:.1f}x' for n in slow)}" if slow else ""),
                                not slow))
    small = next(w for w in WORKLOADS[a.device] if "small" in w)
    z = flat.get((small, "Adam", ZOO_FLAT))
    if z:
        claims.append(claim("opt-in flat buffers: zoo Adam takes at most 0.2x torch's fused Adam on 3,200 small "
                            "tensors in their loop", "target", f"{z:.2f}x ({a.device})", z <= 0.2))
    host_cost = host_cost_per_tensor()
    scattered = host_cost_per_tensor(scattered=True)
    torch_step, zoo_step = cpu_step_cost_per_tensor(torch.optim.Adam), cpu_step_cost_per_tensor(zoo.Adam)
    print("\n### Host cost of the CUDA path per tensor (CPU tensors, nothing launched)\n")
    print("Scattered heap: the same loop with the tensors made among 100,000 freed small tensors, so "
          "their objects lie apart (as in a long-running process) and every read is a cache miss.\n")
    print("| work per step | µs per tensor | scattered heap |\n|---|---|---|")
    for check in ("compiled", "python"):
        what = "the compiled check (tiers/host.py)" if check == "compiled" else "its Python reference"
        for grads, how in (("new", "at new addresses"), ("same", "at the same addresses (CUDA's caching allocator)")):
            row = f"{check}, {grads} gradients"
            if row in host_cost:
                print(f"| steady loop, {what}: tables checked, gradients {how}, arguments built "
                      f"| {host_cost[row] * 1e6:.2f} | {scattered[row] * 1e6:.2f} |")
    print(f"| rebuild: every address new, tables uploaded | {host_cost['rebuild'] * 1e6:.2f} "
          f"| {scattered['rebuild'] * 1e6:.2f} |")
    print(f"| floor of a check through torch's Python API: each parameter's address, gradient and gradient's "
          f"address read | {host_cost['floor'] * 1e6:.2f} | {scattered['floor'] * 1e6:.2f} |")
    print(f"| the CPU path, a whole step of zoo Adam on 3,200 one-element tensors (check, gradient column, "
          f"one C call) | {zoo_step * 1e6:.2f} | |")
    print(f"| the same step of torch's fused Adam (its per-tensor work and kernel calls) | {torch_step * 1e6:.2f} | |")
    steady_row = "compiled, new gradients" if "compiled, new gradients" in host_cost else "python, new gradients"
    steady = host_cost[steady_row]
    claims.append(claim("the CUDA path's host work per step is at most 0.5 µs per tensor in a steady loop",
                        "target", f"{steady * 1e6:.2f} µs ({steady_row}; floor of the torch API reads "
                        f"{host_cost['floor'] * 1e6:.2f} µs; in a scattered heap {scattered[steady_row] * 1e6:.2f} "
                        f"µs, floor {scattered['floor'] * 1e6:.2f} µs)", steady <= 0.5e-6))
    traffic = compiled_traffic()
    if traffic:
        off = [n for n, (table, moved, wide) in traffic.items() if table != FLOOR[n] or moved != FLOOR[n] or not wide]
        claims.append(claim("every Triton kernel, compiled for sm_90, moves exactly its floor of bytes per parameter "
                            "(address tables and flat buffers; flat with 128-bit accesses)",
                            "floor bytes (docs/algorithms.md section 7)",
                            f"{len(traffic) - len(off)} of {len(traffic)} rules"
                            + (f" (not: {', '.join(off)})" if off else ""), not off))
    if len(compiled) == 2:
        (_, t_torch, _, _), (_, t_zoo, graphs, breaks) = compiled["torch Adam"], compiled["zoo Adam"]
        claims.append(claim("torch.compile of the step: zoo Adam has no graph break and one graph, and its compiled "
                            "step takes at most 1.2x torch's compiled Adam", "target",
                            f"{breaks} breaks, {graphs} graph(s), {t_zoo / t_torch:.2f}x ({a.device})",
                            breaks == 0 and graphs == 1 and t_zoo / t_torch <= 1.2))
    raw = {"x torch fused Adam / " + " / ".join(k): v for k, v in default.items()}
    raw.update({"x torch fused Adam / flat / " + " / ".join(k): v for k, v in flat.items()})
    raw.update({f"host cost per tensor / {row}": v for row, v in host_cost.items()})
    raw.update({f"host cost per tensor, scattered heap / {row}": v for row, v in scattered.items()})
    raw.update({"CPU step per tensor / zoo Adam": zoo_step, "CPU step per tensor / torch fused Adam": torch_step})
    raw.update({f"compiled / {n}": list(v) for n, v in compiled.items()})
    raw.update({f"compiled sm_90 bytes / {n}": list(v) for n, v in traffic.items()})
    record(a.out, "step_speed", claims, raw=raw)


if __name__ == "__main__":
    cli_main()
