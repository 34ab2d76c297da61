"""One rank of the 2-process gloo DDP tests (tests/test_compression_ddp.py)."""

import os
import pickle
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from torchopt_zoo.compression import EFHookState, RandK, TopK, econtrol_hook, ef14_hook, ef21_hook

HOOKS = {"ef21": ef21_hook, "econtrol": econtrol_hook, "ef14": ef14_hook}


def data(rank):
    """Heterogeneous least squares: each rank its own inputs and targets."""
    gen = torch.Generator().manual_seed(100 + rank)
    X = torch.randn(64, 12, generator=gen) * (1 + rank)
    y = X @ torch.linspace(-1, 1, 12) + rank
    return X, y


def make(method, compressor, seed=0):
    torch.manual_seed(seed)
    model = DDP(torch.nn.Linear(12, 1))
    state = EFHookState(compressor, method, eta=0.1)
    state.register(model, HOOKS[method])
    return model, state, torch.optim.SGD(model.parameters(), lr=0.01)


def train(model, opt, X, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(X).squeeze(1) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def main(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    X, y = data(rank)
    results = {}
    for method in HOOKS:
        for name, compressor in (("topk", lambda: TopK(k=3)), ("randk", lambda: RandK(k=3, seed=7))):
            model, state, opt = make(method, compressor())
            losses = train(model, opt, X, y, 30)
            straight = [p.detach().clone() for p in model.parameters()]
            bytes_last = state.bytes_last
            # checkpoint after 15 steps, restore into a new DDP instance, continue 15 steps
            model, state, opt = make(method, compressor())
            train(model, opt, X, y, 15)
            blob = pickle.dumps((state, model.module.state_dict(), opt.state_dict()))
            restored_state, weights, opt_state = pickle.loads(blob)
            torch.manual_seed(123)
            fresh = DDP(torch.nn.Linear(12, 1))
            fresh.module.load_state_dict(weights)
            restored_state.register(fresh, HOOKS[method])
            fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.01)
            fresh_opt.load_state_dict(opt_state)
            train(fresh, fresh_opt, X, y, 15)
            resumed = [p.detach().clone() for p in fresh.parameters()]
            gathered = [torch.zeros(13) for _ in range(world)]
            dist.all_gather(gathered, torch.cat([p.reshape(-1) for p in straight]))
            results[(method, name)] = {"losses": losses, "straight": straight, "resumed": resumed,
                                       "ranks": gathered, "bytes_last": bytes_last}
    torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    # Leave without running the C++ destructors of gloo's and DDP's background threads: at
    # interpreter exit they sometimes abort ("terminate called without an active exception")
    # after the results were written, which failed this test at random.
    sys.stdout.flush()
    os._exit(0)
