"""One rank of the kill-and-resume test of the error-feedback hooks (tests/test_compression_ddp.py).

``straight``: 20 steps. ``first``: 10 steps, every rank saves ``state_dict()``s of the model, the
optimizer and the hook state, then kills itself (SIGKILL). ``second``: a new process group and DDP
instance load them (``torch.load`` with ``weights_only=True``) and take the last 10 steps; loading
the next rank's hook state must fail. The model's buckets are small enough for DDP to make
several, and its first buckets differ from the ones it rebuilds after the first iteration."""

import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import torchopt_zoo as zoo
from torchopt_zoo.compression import EFHookState, Identity, RandK, TopK, econtrol_hook, ef14_hook, ef21_hook

rank, world, phase, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
RUNS = {"ef21": (ef21_hook, lambda: TopK(ratio=0.2)), "econtrol": (econtrol_hook, lambda: RandK(ratio=0.2, seed=5)),
        "ef14": (ef14_hook, lambda: TopK(ratio=0.2)), "ef21 dense": (ef21_hook, Identity)}
gen = torch.Generator().manual_seed(100 + rank)
X = torch.randn(20, 32, 12, generator=gen) * (1 + rank)
Y = X.sum(-1, keepdim=True).tanh() + rank


class Net(torch.nn.Module):
    """Layers registered in another order than the forward uses them: DDP's first buckets
    (reverse registration order) differ from the ones it rebuilds (gradient arrival order)."""

    def __init__(self):
        super().__init__()
        self.last = torch.nn.Linear(24, 1)
        self.first = torch.nn.Linear(12, 40)
        self.middle = torch.nn.Linear(40, 24)

    def forward(self, x):
        return self.last(self.middle(self.first(x).tanh()).tanh())


def make(method):
    hook, compressor = RUNS[method]
    torch.manual_seed(0)
    model = DDP(Net(), bucket_cap_mb=0.004)
    state = EFHookState(compressor(), method.split()[0])
    buckets = set()

    def counting(s, bucket):
        buckets.add(bucket.index())
        return hook(s, bucket)
    state.register(model, counting)
    return model, state, zoo.Adam(model.parameters(), lr=1e-2), buckets


def train(model, opt, steps):
    for t in steps:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X[t]), Y[t]).backward()
        opt.step()


results = {}
for method in RUNS:
    model, state, opt, buckets = make(method)
    if phase == "straight":
        train(model, opt, range(20))
        results[method] = {"params": [p.detach().clone() for p in model.parameters()], "buckets": len(buckets)}
    elif phase == "first":
        train(model, opt, range(10))
        torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(), "ef": state.state_dict()},
                   f"{out}/{method}-rank{rank}.pt")
    else:
        saved = torch.load(f"{out}/{method}-rank{rank}.pt")  # weights_only=True, the default
        model.module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        other = torch.load(f"{out}/{method}-rank{(rank + 1) % world}.pt")["ef"]
        try:
            state.load_state_dict(other)
            refused = ""
        except ValueError as e:
            refused = str(e)
        state.load_state_dict(saved["ef"])
        train(model, opt, range(10, 20))
        results[method] = {"params": [p.detach().clone() for p in model.parameters()], "refused": refused}
if phase == "first":
    dist.barrier()
    os.kill(os.getpid(), signal.SIGKILL)  # as a preempted job: no clean shutdown
torch.save(results, f"{out}/{phase}-rank{rank}.pt")
dist.barrier()
sys.stdout.flush()
os._exit(0)  # see ddp_worker.py: gloo's threads may abort at interpreter exit
