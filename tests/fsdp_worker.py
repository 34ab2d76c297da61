"""One rank of the FSDP2 tests (tests/test_fsdp.py): every optimizer on a ``fully_shard``-ed MLP
(2 or 3 gloo processes, each with its share of the batch; 3 shard the 10-row layer unevenly) against the same optimizer on the unsharded
MLP fed the whole batch; and a ``torch.distributed.checkpoint`` save at step 5, loaded into a new
model and optimizer, against the uninterrupted run. Then the searched steps (line search, the
accelerated method) with a collective closure, against the unsharded run. Rank 0 saves
``{case: (max |diff|, resumed bitwise or None where not checkpointed)}``."""

import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import fully_shard

import torchopt_zoo as zoo

rank, world, init_file, out, ckpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
STEPS, SAVE_AT, BATCH = 10, 5, 24
gen = torch.Generator().manual_seed(0)
X, Y = torch.randn(STEPS, BATCH, 6, generator=gen), torch.randn(STEPS, BATCH, 3, generator=gen)


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def sharded():
    model = mlp()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    return fully_shard(model)


def train(model, opt, steps, rows):
    for t in steps:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X[t, rows]), Y[t, rows]).backward()
        opt.step()


def full(model):
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]


mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
results = {}
for cls in zoo.OPTIMIZERS:
    for tier in ({}, {"foreach": False}):
        case = f"{cls.__name__}{tier}"
        lr = 1.0 if cls is zoo.AdaGradNorm else 1e-2
        ref = mlp()
        train(ref, cls(ref.parameters(), lr=lr, **tier), range(STEPS), slice(None))
        model = sharded()
        opt = cls(model.parameters(), lr=lr, **tier)
        train(model, opt, range(SAVE_AT), mine)
        dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=f"{ckpt}/{case}")
        train(model, opt, range(SAVE_AT, STEPS), mine)
        diff = max(float((a - b).abs().max()) for a, b in zip(full(model), full(ref)))
        resumed = sharded()  # the parameters as they were at the save; a new optimizer
        train(resumed, cls(resumed.parameters(), lr=lr, **tier), range(SAVE_AT), mine)
        resumed.zero_grad()  # as a restarted job has no gradients: the state is made for the load
        resumed_opt = cls(resumed.parameters(), lr=lr, **tier)
        state = {"optim": get_optimizer_state_dict(resumed, resumed_opt)}
        dcp.load(state, checkpoint_id=f"{ckpt}/{case}")
        set_optimizer_state_dict(resumed, resumed_opt, state["optim"])
        train(resumed, resumed_opt, range(SAVE_AT, STEPS), mine)
        bitwise = all(torch.equal(a, b) for a, b in zip(full(resumed), full(model)))
        results[case] = (diff, bitwise)


def train_searched(model, opt, steps, rows):
    """Steps with a closure that is collective: every rank returns the mean of the ranks' losses
    (the objective whose gradient FSDP2 hands over)."""
    for t in steps:
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(X[t, rows]), Y[t, rows])
            if torch.is_grad_enabled():
                loss.backward()
            if rows != slice(None):
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world
            return loss
        opt.step(closure)


SEARCHED = {
    "GD+Armijo": lambda ps: zoo.GD(ps, lr=1.0, line_search=zoo.Backtracking(zoo.Armijo())),
    "Adam+Armijo": lambda ps: zoo.Adam(ps, lr=1.0, line_search=zoo.Backtracking(zoo.Armijo())),
    "AdaGradNorm+Armijo": lambda ps: zoo.AdaGradNorm(ps, lr=1.0, weight_decay=0.1,
                                                     line_search=zoo.Backtracking(zoo.Armijo())),
    "BregmanAccelerated": lambda ps: zoo.BregmanAccelerated(ps, L=10.0),
    "BregmanAccelerated+DescentLemma": lambda ps: zoo.BregmanAccelerated(
        ps, line_search=zoo.Backtracking(zoo.DescentLemma())),
}
for case, make in SEARCHED.items():
    ref = mlp()
    train_searched(ref, make(ref.parameters()), range(STEPS), slice(None))
    model = sharded()
    train_searched(model, make(model.parameters()), range(STEPS), mine)
    results[case] = (max(float((a - b).abs().max()) for a, b in zip(full(model), full(ref))), None)
if rank == 0:
    torch.save(results, out)
dist.destroy_process_group()
