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
    1e-5 of the unsharded run."""
    assert fsdp_results[case][0] <= 1e-5
