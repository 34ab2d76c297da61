"""The default tier's Triton kernels over address tables (one launch per device and dtype, nothing
the user owns moved) against the reference tier, through Triton's interpreter on CPU tensors
(``TORCHOPT_ZOO_TRITON=1`` sends CPU parameters to the Triton path, as on CUDA)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchopt_zoo as torch_zoo

from conftest import CONFIGS, PERTURBATIONS, assert_found_inf_skips, assert_perturbed_runs_match, assert_same_run, config_id, draw_table_case, run_groups

pytest.importorskip("triton")

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_table_kernels_match_reference(cfg, data, dtype):
    init, grads, n_groups, kwargs = draw_table_case(data, dtype, 3)
    ref_params, ref = run_groups(cfg, init, grads, n_groups, **kwargs, foreach=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHOPT_ZOO_TRITON", "1")
        params, opt = run_groups(cfg, init, grads, n_groups, **kwargs)
    if any(g is not None for g in grads[0]):
        assert opt._tables  # the step took the address tables
    assert_same_run(ref_params, ref, params, opt, TOL[dtype])


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=config_id)
def test_amp_found_inf_skips_the_table_step_on_the_device(cfg, monkeypatch):
    monkeypatch.setenv("TORCHOPT_ZOO_TRITON", "1")
    assert_found_inf_skips(*cfg)


@pytest.mark.parametrize("perturb", PERTURBATIONS)
def test_the_steady_state_check_sees_what_changed(perturb, host_check, monkeypatch):
    """The steady-state path checks the parameters' addresses and the state objects before it
    launches over the old tables: each change takes the slow path (and new tables) and the run
    matches the reference tier."""
    monkeypatch.setenv("TORCHOPT_ZOO_TRITON", "1")  # the reference tier does not look at it
    assert_perturbed_runs_match(perturb, torch_zoo.Adam, TOL[torch.float32])
