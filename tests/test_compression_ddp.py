"""The error-feedback DDP hooks in 2 real gloo processes (a fresh file:// rendezvous per test)."""

import os
import subprocess
import sys
import zlib

import pytest
import torch
import torch.distributed as dist

import torchopt_zoo.compression as C


def test_hooks_keep_ranks_identical_reduce_loss_send_k_values_and_restore(tmp_path):
    init_file = tmp_path / "rendezvous"
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, str(r), "2", str(init_file), str(tmp_path / f"r{r}.pt")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-3000:]
    results = [torch.load(tmp_path / f"r{r}.pt", weights_only=False) for r in range(2)]
    for key, r0 in results[0].items():
        r1 = results[1][key]
        assert torch.equal(r0["ranks"][0], r0["ranks"][1]), key  # parameters identical across ranks
        assert r0["losses"][-1] < 0.5 * r0["losses"][0], key  # loss falls
        for a, b in zip(r0["straight"], r0["resumed"]):  # checkpoint restores and continues
            assert torch.equal(a, b), key
        method, compressor = key
        k = 3 + 1  # per step: k = 3 of the weight's 12 entries and the bias's 1, as float32 values,
        # plus as many int32 indices for Top-K
        assert r0["bytes_last"] == r1["bytes_last"] == (k * 4 + k * 4 if compressor == "topk" else k * 4), key


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    """A 1-process gloo group, so the hooks' state updates run in this process."""
    init = tmp_path_factory.mktemp("rendezvous") / "file"
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


SIMULATED = {"ef21": (C.EF21, {}), "econtrol": (C.EControl, {"eta": 0.3}), "ef14": (C.EF14, {})}


class DrawsAsTheHooks(C.RandK):
    """Rand-K drawing the coordinates the hooks draw for parameter ``name`` at the step the
    hook ``state`` has just finished (the reference steps right after it)."""

    def __init__(self, k, seed, name, state):
        super().__init__(k=k, seed=seed)
        self.name, self.state = name, state

    def indices(self, d):
        key = (self.seed * 1_000_003 + self.state.iter - 1) * 1_000_003 + zlib.crc32(self.name.encode())
        return torch.randperm(d, generator=torch.Generator().manual_seed(key % 2**63))[: self.k_at_most(d)]


SIZES = {"a": (3, 4), "b": (5,), "c": (2, 3)}
MAKE = {"topk": lambda: C.TopK(k=4), "randk": lambda: C.RandK(k=4, seed=3), "identity": C.Identity}


def hook_steps(state, params, layouts, steps, seed=0):
    """Run ``state.aggregate`` over ``steps`` steps of random gradients, the bucket layout of step
    ``t`` being ``layouts(t)`` (a list of buckets, each a list of names); yields the gradients
    and each name's aggregate."""
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        grads = {n: torch.randn(s, generator=gen, dtype=torch.float64).float() for n, s in SIZES.items()}
        got = {}
        for bucket in layouts(t):
            flat = torch.cat([grads[n].reshape(-1) for n in bucket])
            out = state.aggregate(flat.clone(), [params[n] for n in bucket])
            got.update(zip(bucket, out.split([params[n].numel() for n in bucket])))
        state.end_step()
        yield grads, got


@pytest.mark.parametrize("compressor", sorted(MAKE))
@pytest.mark.parametrize("method", sorted(SIMULATED))
def test_hook_state_updates_follow_the_simulated_reference(one_rank_group, method, compressor):
    # EFHookState.aggregate (the hooks' body: flat buffers, sparse in-place updates) against the
    # dense simulated method with one worker, one instance per parameter (the hooks compress each
    # parameter on its own): after the hook's full-gradient start (start_iter steps, whose last
    # one initialises the method as the simulated method's first step does), every step hands
    # the optimizer the same aggregate. Midway the bucket layout changes (DDP rebuilding its
    # buckets): the state follows the parameter names.
    params = {n: torch.zeros(s) for n, s in SIZES.items()}
    state = C.EFHookState(MAKE[compressor](), method, eta=SIMULATED[method][1].get("eta", 0.1))
    state.names = {id(p): n for n, p in params.items()}
    cls, kw = SIMULATED[method]

    def per_parameter(name):
        d = params[name].numel()
        made = {"topk": lambda: C.TopK(k=min(4, d)), "identity": C.Identity,
                "randk": lambda: DrawsAsTheHooks(4, 3, name, state)}[compressor]()
        return cls([torch.zeros(d)], 1, made, lr=1.0, **kw)

    references = None
    layouts = lambda t: [["a", "b", "c"]] if t < 5 else [["c"], ["a", "b"]]  # noqa: E731
    for t, (grads, got) in enumerate(hook_steps(state, params, layouts, 8)):
        if t == state.start_iter - (1 if method != "ef14" else 0):  # the references start here
            references = {n: per_parameter(n) for n in SIZES}
        if references is None:
            for n in SIZES:  # the full-gradient start: a plain all-reduce
                torch.testing.assert_close(got[n], grads[n].reshape(-1))
            continue
        for n, reference in references.items():
            move = reference.step([[grads[n].reshape(-1)]])
            torch.testing.assert_close(got[n], move, rtol=1e-6, atol=1e-6)
    assert state.iter == 8


@pytest.mark.parametrize("compressor", sorted(MAKE))
@pytest.mark.parametrize("method", sorted(SIMULATED))
def test_hook_aggregates_do_not_depend_on_the_bucket_layout(one_rank_group, method, compressor):
    """The same gradients through one bucket and through two buckets of another order: every
    parameter's aggregate is bitwise the same (what a job restarted into a new DDP instance,
    whose first buckets differ, needs to take the uninterrupted job's steps)."""
    runs = []
    for layouts in (lambda t: [["a", "b", "c"]], lambda t: [["c", "a"], ["b"]]):
        params = {n: torch.zeros(s) for n, s in SIZES.items()}
        state = C.EFHookState(MAKE[compressor](), method)
        state.names = {id(p): n for n, p in params.items()}
        runs.append([got for _, got in hook_steps(state, params, layouts, 6)])
    for one, two in zip(*runs):
        assert all(torch.equal(one[n], two[n]) for n in SIZES)


def run_ranks(worker, world, phase, tmp_path):
    init_file = tmp_path / f"rendezvous-{phase}"
    procs = [subprocess.Popen([sys.executable, worker, str(r), str(world), phase, str(init_file), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    return [(p.wait(timeout=300), p.stdout.read().decode()) for p in procs]


@pytest.mark.parametrize("world", [2, 3])
def test_hooks_resume_bitwise_after_a_kill_with_several_buckets(tmp_path, world):
    """2 or 3 gloo ranks, several DDP buckets whose first layout differs from the rebuilt one:
    killed (SIGKILL) after 10 steps and restarted from their state_dicts (loaded with
    weights_only=True), every method ends bitwise where the uninterrupted 20 steps end (Top-K,
    Rand-K, and a dense compressor, all-reduced per parameter); each rank refuses another rank's
    hook state."""
    worker = os.path.join(os.path.dirname(__file__), "ef_resume_worker.py")
    for phase, expected in (("straight", 0), ("first", -9), ("second", 0)):
        for code, out in run_ranks(worker, world, phase, tmp_path):
            assert code == expected, out[-3000:]
    for rank in range(world):
        straight = torch.load(tmp_path / f"straight-rank{rank}.pt")
        resumed = torch.load(tmp_path / f"second-rank{rank}.pt")
        for method, run in straight.items():
            assert run["buckets"] >= 2, method
            assert all(torch.equal(a, b) for a, b in zip(run["params"], resumed[method]["params"])), method
            assert f"saved by rank {(rank + 1) % world}; this is rank {rank}" in resumed[method]["refused"]
