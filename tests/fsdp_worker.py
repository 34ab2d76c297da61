"""One rank of the FSDP2 tests (tests/test_fsdp.py): every optimizer on a ``fully_shard``-ed MLP
(2 or 3 gloo processes, each with its share of the batch; 3 shard the 10-row layer unevenly) against the same optimizer on the unsharded
MLP fed the whole batch; and a ``torch.distributed.checkpoint`` save at step 5, loaded into a new
model and optimizer, against the uninterrupted run. Then the searched steps (line search, the
accelerated method) with a collective closure, against the unsharded run and resumed from a
distributed checkpoint; AdAdaGrad's batch tests over the shards' columns of the per-sample
gradients, against the whole gradient's, and AdAdaGrad(-Norm) runs; and distributed checkpoints of a DDP
model's optimizers. Rank 0 saves
``{case: (max |diff|, resumed bitwise or None where not checkpointed)}``."""

import os
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
    opt = make(model.parameters())
    train_searched(model, opt, range(SAVE_AT), mine)
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=f"{ckpt}/{case}")
    train_searched(model, opt, range(SAVE_AT, STEPS), mine)
    diff = max(float((a - b).abs().max()) for a, b in zip(full(model), full(ref)))
    resumed = sharded()
    train_searched(resumed, make(resumed.parameters()), range(SAVE_AT), mine)
    resumed_opt = make(resumed.parameters())  # a new optimizer: DCP's template without a step
    state = {"optim": get_optimizer_state_dict(resumed, resumed_opt)}
    dcp.load(state, checkpoint_id=f"{ckpt}/{case}")
    set_optimizer_state_dict(resumed, resumed_opt, state["optim"])
    train_searched(resumed, resumed_opt, range(SAVE_AT, STEPS), mine)
    bitwise = all(torch.equal(a, b) for a, b in zip(full(resumed), full(model)))
    stats = getattr(opt, "line_search_stats", None) or opt.stats
    resumed_stats = getattr(resumed_opt, "line_search_stats", None) or resumed_opt.stats
    same = {k: v for k, v in stats.items() if k != "last"} == {k: v for k, v in resumed_stats.items() if k != "last"}
    results[case] = (diff, bitwise and same)


# AdAdaGrad's batch tests over sharded gradients: each rank passes its shards' columns of the
# per-sample gradients (of the whole batch, from the unsharded model), the test sums over shards
def per_sample(model_ref, t):
    loss_fn = torch.nn.functional.mse_loss
    return zoo.batch.per_sample_gradients(model_ref, loss_fn, X[t], Y[t])[1]


for test in zoo.batch.TESTS:
    for statistics in ("global", "per_tensor"):
        ref = mlp()
        G = per_sample(ref, 0)
        model = sharded()
        params = list(model.parameters())
        sizes = [p.numel() for p in ref.parameters()]
        local_sizes = [p.to_local().numel() for p in params]
        whole = zoo.batch.statistic(test, G, sizes=sizes if statistics == "per_tensor" else None)
        like = params[0]
        shards = zoo.batch.statistic(test, zoo.batch.local_columns(G, params),
                                     sizes=local_sizes if statistics == "per_tensor" else None,
                                     sum_shards=zoo.core.sharding.sum_over_shards(like),
                                     max_shards=zoo.core.sharding.sum_over_shards(like, dist.ReduceOp.MAX))
        results[f"statistic {test} {statistics}"] = (abs(shards - whole) / abs(whole), None)

for cls, test in ((zoo.AdAdaGrad, "inner_product"), (zoo.AdAdaGradNorm, "norm")):
    case = f"{cls.__name__} {test}"

    def make(ps):
        return cls(ps, lr=0.05, test=test, eta=0.05, theta=0.05, initial_batch_size=2, max_batch_size=10**6)

    def train_batch(model, opt, steps, rows, reference):
        for t in steps:
            G = per_sample(reference, t)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(X[t, rows]), Y[t, rows]).backward()
            opt.step(per_sample_grads=G if model is reference else zoo.batch.local_columns(G, list(model.parameters())))
            if model is not reference:  # the reference follows the sharded model's parameters
                with torch.no_grad():
                    for a, b in zip(reference.parameters(), full(model)):
                        a.copy_(b)

    ref = mlp()
    ref_opt = make(ref.parameters())
    train_batch(ref, ref_opt, range(STEPS), slice(None), ref)
    model, follower = sharded(), mlp()
    opt = make(model.parameters())
    train_batch(model, opt, range(SAVE_AT), mine, follower)
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=f"{ckpt}/{case}")
    train_batch(model, opt, range(SAVE_AT, STEPS), mine, follower)
    diff = max(float((a - b).abs().max()) for a, b in zip(full(model), full(ref)))
    resumed, follower = sharded(), mlp()
    train_batch(resumed, make(resumed.parameters()), range(SAVE_AT), mine, follower)
    resumed.zero_grad()
    resumed_opt = make(resumed.parameters())
    state = {"optim": get_optimizer_state_dict(resumed, resumed_opt)}
    dcp.load(state, checkpoint_id=f"{ckpt}/{case}")
    set_optimizer_state_dict(resumed, resumed_opt, state["optim"])
    train_batch(resumed, resumed_opt, range(SAVE_AT, STEPS), mine, follower)
    bitwise = all(torch.equal(a, b) for a, b in zip(full(resumed), full(model)))
    same_batch = opt.batch.history == ref_opt.batch.history == resumed_opt.batch.history and len(ref_opt.batch.history) > 1
    results[case] = (diff if same_batch else float("inf"), bitwise)
# The entropic mirror on shards of whole rows: W (6 x 3), each row on the simplex, sharded by rows
class Mixture(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.W = torch.nn.Parameter(torch.full((6, 3), 1 / 3, dtype=torch.float64))

    def forward(self, x):  # a float64 loss: restart's f(y_new) > f(y) is not decided by the shards' rounding
        return x[:, :6].double() @ self.W


def mixture(shard):
    # W sits in the root module, which FSDP2 leaves unsharded after a forward-only pass unless told
    # to reshard: the next forward would then not gather what the step wrote into the shards
    model = Mixture()
    return fully_shard(model, reshard_after_forward=True) if shard else model


for restart in (False, True):
    case = f"BregmanAccelerated entropy restart={restart}"

    def train_mixture(model, steps, rows):
        opt = zoo.BregmanAccelerated(model.parameters(), mirror="entropy", L=5.0, restart=restart)
        train_searched(model, opt, steps, rows)
    ref, model = mixture(False), mixture(True)
    train_mixture(ref, range(STEPS), slice(None))
    train_mixture(model, range(STEPS), mine)
    results[case] = (max(float((a - b).abs().max()) for a, b in zip(full(model), full(ref))), None)


# Distributed checkpoints of a DDP model (replicated parameters): every optimizer, a searched one,
# the accelerated method and AdAdaGrad resume bitwise
def ddp_model():
    return torch.nn.parallel.DistributedDataParallel(mlp())


DDP_CASES = {f"DDP {cls.__name__}": (lambda ps, cls=cls: cls(ps, lr=1e-2), train) for cls in zoo.OPTIMIZERS}
DDP_CASES["DDP Adam+Armijo"] = (SEARCHED["Adam+Armijo"], train_searched)
DDP_CASES["DDP BregmanAccelerated+DescentLemma"] = (SEARCHED["BregmanAccelerated+DescentLemma"], train_searched)
DDP_CASES["DDP AdAdaGrad"] = (lambda ps: zoo.AdAdaGrad(ps, lr=1e-2), train)
for case, (make, run) in DDP_CASES.items():
    model = ddp_model()
    opt = make(model.parameters())
    run(model, opt, range(SAVE_AT), mine)
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=f"{ckpt}/{case}")
    run(model, opt, range(SAVE_AT, STEPS), mine)
    resumed = ddp_model()
    run(resumed, make(resumed.parameters()), range(SAVE_AT), mine)
    resumed.zero_grad()
    resumed_opt = make(resumed.parameters())
    state = {"optim": get_optimizer_state_dict(resumed, resumed_opt)}
    dcp.load(state, checkpoint_id=f"{ckpt}/{case}")
    set_optimizer_state_dict(resumed, resumed_opt, state["optim"])
    run(resumed, resumed_opt, range(SAVE_AT, STEPS), mine)
    results[case] = (0.0, all(torch.equal(a, b) for a, b in zip(resumed.parameters(), model.parameters())))
if rank == 0:
    torch.save(results, out)
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # see ddp_worker.py: gloo's threads may abort at interpreter exit
