"""FSDP2 (``fully_shard``, DTensor parameters) and distributed checkpoints, in 2 and 3 gloo
processes (tests/fsdp_worker.py): every optimizer, default and reference tiers."""

import os
import subprocess
import sys

import pytest
import torch

import torchopt_zoo as zoo

pytest.importorskip("torch.distributed.fsdp")


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def fsdp_results(request, tmp_path_factory):
    world = request.param
    tmp = tmp_path_factory.mktemp("fsdp")
    worker = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, str(r), str(world), str(tmp / "rdv"), str(tmp / "out.pt"),
                               str(tmp / "ckpt")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out.decode()[-4000:]
    return torch.load(tmp / "out.pt")


CASES = [f"{cls.__name__}{tier}" for cls in zoo.OPTIMIZERS for tier in ({}, {"foreach": False})]


@pytest.mark.parametrize("case", CASES)
def test_fsdp2_matches_the_unsharded_run_and_resumes_from_a_distributed_checkpoint(fsdp_results, case):
    """10 steps on a 2- or 3-rank ``fully_shard`` MLP, each rank with its share of the batch, within 1e-5 of the
    unsharded model fed the whole batch; saved at step 5 with ``torch.distributed.checkpoint`` and
    loaded into a new model and optimizer, the resumed run ends bitwise where the uninterrupted
    one does."""
    diff, bitwise = fsdp_results[case]
    assert diff <= 1e-5
    assert bitwise


@pytest.mark.parametrize("case", ["GD+Armijo", "Adam+Armijo", "AdaGradNorm+Armijo", "BregmanAccelerated",
                                  "BregmanAccelerated+DescentLemma"])
def test_fsdp2_searched_steps_match_the_unsharded_run(fsdp_results, case):
    """Line search (inner products and the weight-decay term summed over the shards) and the
    accelerated method, with a closure that returns the mean of the ranks' losses: 10 steps within
    1e-5 of the unsharded run; a distributed checkpoint at step 5 (its template made at the new
    optimizer's construction, no step) resumes bitwise, with the search's counters."""
    diff, resumed = fsdp_results[case]
    assert diff <= 1e-5
    assert resumed


@pytest.mark.parametrize("restart", [False, True])
def test_fsdp2_entropic_mirror_on_shards_of_whole_rows(fsdp_results, restart):
    """mirror="entropy" normalises each row where it is: a parameter sharded by rows steps as the
    unsharded one (10 steps, within 1e-5)."""
    assert fsdp_results[f"BregmanAccelerated entropy restart={restart}"][0] <= 1e-5


@pytest.mark.parametrize("test", zoo.batch.TESTS)
@pytest.mark.parametrize("statistics", ["global", "per_tensor"])
def test_fsdp2_batch_tests_over_the_shards_are_the_whole_gradients(fsdp_results, test, statistics):
    """Each rank's columns of the per-sample gradients (its shards, ``local_columns``), the sums
    over coordinates taken over the shards: the statistic of the whole gradient."""
    assert fsdp_results[f"statistic {test} {statistics}"][0] <= 1e-9


@pytest.mark.parametrize("case", ["AdAdaGrad inner_product", "AdAdaGradNorm norm"])
def test_fsdp2_adaptive_batch_matches_the_unsharded_run(fsdp_results, case):
    """The same batch sizes as the unsharded run (which grows), parameters within 1e-5 after 10
    steps, and a bitwise resume from a distributed checkpoint."""
    diff, bitwise = fsdp_results[case]
    assert diff <= 1e-5
    assert bitwise


@pytest.mark.parametrize("case", [f"DDP {cls.__name__}" for cls in zoo.OPTIMIZERS]
                         + ["DDP Adam+Armijo", "DDP BregmanAccelerated+DescentLemma", "DDP AdAdaGrad"])
def test_ddp_resumes_bitwise_from_a_distributed_checkpoint(fsdp_results, case):
    """A DDP model's optimizer saved with ``torch.distributed.checkpoint`` at step 5 and loaded into
    a new optimizer (made after the restart, no step taken) ends bitwise where the uninterrupted run does."""
    assert fsdp_results[case][1]
