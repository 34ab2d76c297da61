"""The error-feedback DDP hooks in 2 real gloo processes (a fresh file:// rendezvous per test)."""

import os
import subprocess
import sys

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
        k = 3  # per bucket and step: k float32 values, plus k int32 indices for Top-K
        assert r0["bytes_last"] == r1["bytes_last"] == (k * 4 + k * 4 if compressor == "topk" else k * 4), key


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    """A 1-process gloo group, so the hooks' state updates run in this process."""
    init = tmp_path_factory.mktemp("rendezvous") / "file"
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


SIMULATED = {"ef21": (C.EF21, {}), "econtrol": (C.EControl, {"eta": 0.3}), "ef14": (C.EF14, {})}


@pytest.mark.parametrize("compressor", ["topk", "randk", "identity"])
@pytest.mark.parametrize("method", sorted(SIMULATED))
def test_hook_state_updates_follow_the_simulated_reference(one_rank_group, method, compressor):
    # EFHookState.aggregate (the hooks' body: flat buffers, sparse in-place updates) against the
    # dense simulated method with one worker: after the hook's full-gradient start (start_iter
    # steps, whose last one initialises the method as the simulated method's first step does),
    # every step hands the optimizer the same aggregate. Midway the bucket layout changes (DDP
    # rebuilding its buckets): the state follows the parameter names.
    make = {"topk": lambda: C.TopK(k=4), "randk": lambda: C.RandK(k=4, seed=3), "identity": C.Identity}[compressor]
    gen = torch.Generator().manual_seed(0)
    sizes = {"a": (3, 4), "b": (5,), "c": (2, 3)}
    params = {n: torch.zeros(s) for n, s in sizes.items()}
    state = C.EFHookState(make(), method, eta=SIMULATED[method][1].get("eta", 0.1))
    state.names = {id(p): n for n, p in params.items()}
    cls, kw = SIMULATED[method]
    reference = None
    for t in range(8):
        grads = {n: torch.randn(s, generator=gen, dtype=torch.float64).float() for n, s in sizes.items()}
        order = ["a", "b", "c"] if t < 5 else ["c", "a", "b"]  # names sorted = the first layout, as Rand-K's
        flat = torch.cat([grads[n].reshape(-1) for n in order])
        out = state.aggregate(flat.clone(), [params[n] for n in order])
        state.end_step()
        if t == state.start_iter - (1 if method != "ef14" else 0):  # the reference starts here
            reference = cls([torch.zeros(sum(p.numel() for p in params.values()))], 1, make(), lr=1.0, **kw)
        if reference is None:
            torch.testing.assert_close(out, flat)  # the full-gradient start: a plain all-reduce
            continue
        move = reference.step([[torch.cat([grads[n].reshape(-1) for n in "abc"])]])
        got = dict(zip(order, out.split([params[n].numel() for n in order])))
        torch.testing.assert_close(torch.cat([got[n] for n in "abc"]), move, rtol=1e-6, atol=1e-6)
    assert state.iter == 8 and reference.ef_state["t"] >= 3
