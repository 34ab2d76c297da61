"""Beyond one process: zoo optimizers under FSDP2 against torch's, and the error-feedback DDP hooks
against DDP's all-reduce, in 2 gloo processes on this machine (one table).

FSDP2 (``fully_shard``, every Linear its own unit): an MLP of 8 layers of 512 x 512 (2.1M
parameters) steps with torch Adam, zoo Adam and zoo AdaGradNorm, each on its own copy of the model,
the optimizers' ``step()`` timed in alternation (median ms of rank 0). The bytes the step itself
sends are counted by wrapping ``torch.distributed``'s collectives during ``step()``; FSDP2's own
traffic per training step (parameters all-gathered in forward and again in backward, gradients
reduce-scattered), the same whatever the optimizer, is computed from the shard sizes.

DDP: the digits MLP of ``bench/compression.py`` (64-32-10), a whole training step timed (forward,
backward with the communication hook, SGD step), with DDP's all-reduce and with the zoo's EF21 and
EControl hooks (Top-K 10% per parameter); the bytes each rank sends per step as the hooks count
them (all-reduce: the whole gradient).

The same code runs on several machines: start it with ``torchrun --nnodes N --nproc-per-node P
--rdzv-endpoint HOST:PORT`` and ``init_process_group("nccl")`` (README, "Several machines").

    python bench/distributed.py [--quick]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import claim, cli, progress, record, run_workers  # noqa: E402

WORKER = r'''
import json, os, sys, time, statistics, torch, numpy as np
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from sklearn import datasets
import torchopt_zoo as zoo
import torchopt_zoo.compression as C

rank, world, init_file, out, steps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
torch.set_num_threads(1)
WIDTH, DEPTH, BATCH = 512, 8, 64
results = {}


class Counted:
    """Bytes sent through torch.distributed's collectives while inside (all-reduce counted as the
    tensor's size, as ring all-reduce sends about twice that; the zoo's only collective in a step)."""
    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast")

    def __enter__(self):
        self.bytes, self.saved = 0, {n: getattr(dist, n) for n in self.NAMES}
        for name, fn in self.saved.items():
            def wrapped(tensor, *args, _fn=fn, **kwargs):
                t = tensor if torch.is_tensor(tensor) else args[0]
                self.bytes += t.numel() * t.element_size()
                return _fn(tensor, *args, **kwargs)
            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def mlp():
    torch.manual_seed(0)
    layers = []
    for _ in range(DEPTH):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


makers = {"torch Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3), "zoo Adam": lambda ps: zoo.Adam(ps, lr=1e-3),
          "zoo AdaGradNorm": lambda ps: zoo.AdaGradNorm(ps, lr=1e-2)}
models = {name: mlp() for name in makers}
opts = {name: make(models[name].parameters()) for name, make in makers.items()}
gen = torch.Generator().manual_seed(rank)
times = {name: [] for name in makers}
sent = {name: 0 for name in makers}
for i in range(steps + 3):
    x = torch.randn(BATCH, WIDTH, generator=gen)
    for name, model in models.items():
        opts[name].zero_grad()
        model(x).square().mean().backward()
        dist.barrier()
        start = time.perf_counter()
        with Counted() as counted:
            opts[name].step()
        if i >= 3:
            times[name].append(time.perf_counter() - start)
            sent[name] = counted.bytes
params = sum(p.numel() for p in models["zoo Adam"].parameters())
shard_bytes = 4 * params / world
fsdp_bytes = 3 * (world - 1) * shard_bytes  # all-gather twice (forward, backward), reduce-scatter once
for name in makers:
    results[f"FSDP2 {name}"] = {"ms": 1e3 * statistics.median(times[name]), "step_bytes": sent[name],
                                "fsdp_bytes": fsdp_bytes, "what": "optimizer step"}

data = datasets.load_digits()
X = torch.as_tensor(data.data, dtype=torch.float32)
X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
y = torch.as_tensor(data.target)
shard = len(y) // world
Xr, yr = X[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
ddp = {}
for name in ["DDP all-reduce", "DDP + zoo EF21 hook (Top-K 10%)", "DDP + zoo EControl hook (Top-K 10%)"]:
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)))
    state = None
    if "zoo" in name:
        method = name.split()[3].lower()
        state = C.EFHookState(C.TopK(ratio=0.1), method, eta=0.1)
        state.register(model, {"ef21": C.ef21_hook, "econtrol": C.econtrol_hook}[method])
    ddp[name] = (model, torch.optim.SGD(model.parameters(), lr=0.1), state, [])
for i in range(steps + 3):
    for name, (model, opt, state, ts) in ddp.items():
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xr), yr).backward()
        opt.step()
        if i >= 3:
            ts.append(time.perf_counter() - start)
for name, (model, opt, state, ts) in ddp.items():
    whole = sum(p.numel() * 4 for p in model.parameters())
    results[name] = {"ms": 1e3 * statistics.median(ts), "step_bytes": whole if state is None else state.bytes_last,
                     "fsdp_bytes": None, "what": "training step"}
if rank == 0:
    json.dump(results, open(out, "w"))
dist.destroy_process_group()
# Leave without running the C++ destructors of gloo's and DDP's background threads: at interpreter
# exit they sometimes abort ("terminate called without an active exception") after the results
# were written (as tests/ddp_worker.py does)
sys.stdout.flush()
os._exit(0)
'''


def main():
    args = cli(__doc__, "fewer steps")
    steps = 10 if args.quick else 40
    progress(f"2 gloo processes, {steps} timed steps per row")
    rows = run_workers(WORKER, 2, steps)
    base = rows["FSDP2 torch Adam"]["ms"]
    print("\n### 2 gloo processes on this machine (1 thread each), median ms of rank 0\n")
    print("| setting | timed | median ms | x torch Adam under FSDP2 | bytes the step's own collectives send "
          "| FSDP2's traffic per training step (bytes per rank) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = f"{r['ms'] / base:.2f}" if name.startswith("FSDP2") else ""
        fsdp = f"{r['fsdp_bytes']:,.0f}" if r["fsdp_bytes"] is not None else ""
        print(f"| {name} | {r['what']} | {r['ms']:.2f} | {ratio} | {r['step_bytes']:,} | {fsdp} |")
    zoo_adam, ef21 = rows["FSDP2 zoo Adam"], rows["DDP + zoo EF21 hook (Top-K 10%)"]
    record(args.out, "distributed", [
        claim("under FSDP2, zoo Adam's step takes at most 1.05x torch Adam's, and sends nothing of its own",
              "drop-in", f"{zoo_adam['ms'] / base:.2f}x, {zoo_adam['step_bytes']} bytes",
              zoo_adam["ms"] <= 1.05 * base and zoo_adam["step_bytes"] == 0),
        claim("under FSDP2, AdaGradNorm's step sends one number (its sum of squares over the shards)",
              "Ward, Wu & Bottou, arXiv:1806.01811", f"{rows['FSDP2 zoo AdaGradNorm']['step_bytes']} bytes",
              rows["FSDP2 zoo AdaGradNorm"]["step_bytes"] <= 8),
        claim("the EF21 DDP hook sends fewer bytes per step than DDP's all-reduce",
              "Richtarik, Sokolov & Fatkhullin, arXiv:2106.05203",
              f"{ef21['step_bytes']:,} vs {rows['DDP all-reduce']['step_bytes']:,}",
              ef21["step_bytes"] < rows["DDP all-reduce"]["step_bytes"]),
    ], raw=rows)


if __name__ == "__main__":
    main()
