"""The default tier on CPU: each rule's C kernel over address tables (torchopt_zoo/tiers/cpu.py;
one call per step, the user's own tensors, nothing rebound) against the reference tier."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchopt_zoo as zoo
from conftest import CONFIGS, PERTURBATIONS, assert_found_inf_skips, assert_perturbed_runs_match, assert_same_run, config_id, draw_table_case, run_groups
from torchopt_zoo.tiers import cpu

if not cpu.enabled():
    pytest.skip("no C compiler", allow_module_level=True)

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_cpu_kernels_match_reference(cfg, data, dtype):
    init, grads, n_groups, kwargs = draw_table_case(data, dtype, 4, scales=(None, 4.0))
    ref_params, ref = run_groups(cfg, init, grads, n_groups, **kwargs, foreach=False)
    params, opt = run_groups(cfg, init, grads, n_groups, **kwargs)
    if any(g is not None for g in grads[0]):
        assert any(isinstance(t, cpu.CpuTable) for t in opt._tables.values())  # the step took the C kernel
    assert_same_run(ref_params, ref, params, opt, TOL[dtype])


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_non_finite_gradients_as_the_reference(cfg):
    """inf and NaN in a gradient go where the reference tier's torch ops send them (torch.maximum
    and the square root keep NaN, torch.sign makes it 0)."""
    cls, kw = cfg
    init = torch.randn(40, dtype=torch.float64)
    grads = [torch.randn(40, dtype=torch.float64) for _ in range(3)]
    grads[1][3], grads[1][7], grads[2][11] = float("nan"), float("inf"), -float("inf")
    out = []
    for tier in ({"foreach": False}, {}):
        p = init.clone().requires_grad_()
        opt = cls([p], **tier, **kw)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out.append(p.detach())
    torch.testing.assert_close(out[1], out[0], equal_nan=True, **TOL[torch.float64])


@pytest.mark.parametrize("perturb", PERTURBATIONS)
@pytest.mark.parametrize("cls", [zoo.Adam, zoo.NAdam, zoo.AdaGradNorm], ids=lambda c: c.__name__)
def test_the_steady_state_check_sees_what_changed(perturb, cls, host_check):
    """As tests/test_table.py checks the Triton path: each change before a step takes the slow
    path and new tables, and the run matches the reference tier."""
    assert_perturbed_runs_match(perturb, cls, TOL[torch.float32])


@pytest.mark.parametrize("cfg", CONFIGS[::4], ids=config_id)
def test_amp_found_inf_skips_the_step(cfg):
    assert_found_inf_skips(*cfg)


def stepped(cls, **tier):
    torch.manual_seed(0)
    params = [torch.randn(6, requires_grad=True), torch.randn(2, 3, requires_grad=True)]
    opt = cls(params, **tier)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_complex_parameters_step_as_their_real_views(cfg):
    cls, kw = cfg
    torch.manual_seed(0)
    z = torch.randn(3, 4, dtype=torch.complex64)
    grads = [torch.randn(3, 4, dtype=torch.complex64) for _ in range(3)]
    out = []
    for tier, wrap in (({}, lambda t: t), ({}, torch.view_as_real), ({"foreach": False}, lambda t: t)):
        p = wrap(z.clone()).requires_grad_()
        opt = cls([p], **tier, **kw)
        for g in grads:
            p.grad = wrap(g.clone())
            opt.step()
        assert (not tier) == any(isinstance(t, cpu.CpuTable) for t in opt._tables.values())
        out.append(torch.view_as_real(p.detach()) if p.is_complex() else p.detach())
    assert torch.equal(out[0], out[1])  # the same C step over the same floats
    torch.testing.assert_close(out[0], out[2], **TOL[torch.float32])


def test_a_compiler_that_fails_leaves_the_multi_tensor_tier_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "_LIBRARIES", {})
    monkeypatch.setattr(cpu, "_WARNED", set())
    monkeypatch.setenv("TORCHOPT_ZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with pytest.warns(RuntimeWarning, match="did not compile"):
        params, opt = stepped(zoo.Lion)
    assert not opt._tables
    ref, _ = stepped(zoo.Lion, foreach=False)
    for a, b in zip(ref, params):
        torch.testing.assert_close(b.detach(), a.detach())


def test_the_tier_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TORCHOPT_ZOO_CPU_KERNELS", "0")
    _, opt = stepped(zoo.Lion)
    assert not opt._tables


@pytest.mark.parametrize("make", [lambda p: p.t(), lambda p: p.to(torch.bfloat16)], ids=["transposed", "bfloat16"])
def test_tensors_the_kernel_cannot_take_step_in_the_multi_tensor_tier(make):
    base = torch.randn(4, 3)
    out = []
    for tier in ({"foreach": False}, {}):
        p = make(base.clone()).detach().requires_grad_()
        opt = zoo.RMSprop([p], lr=0.01, centered=True)
        opt.param_groups[0].update(tier)
        for _ in range(2):
            p.grad = torch.ones_like(p)
            opt.step()
        out.append(p.detach())
        if tier == {}:
            assert not any(isinstance(t, cpu.CpuTable) for t in opt._tables.values())
    torch.testing.assert_close(out[1], out[0])


def test_group_wide_state_of_another_dtype_takes_the_multi_tensor_tier():
    """AdaGrad-Norm's sum of squares (a float64 tensor loaded into a float32 group, say) is not
    what the kernel reads: the step takes the multi-tensor tier, as the reference does."""
    out = []
    for tier in ({"foreach": False}, {}):
        torch.manual_seed(0)
        params = [torch.randn(5, requires_grad=True), torch.randn(3, requires_grad=True)]
        opt = zoo.AdaGradNorm(params, **tier)
        for step in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
            if step == 0:
                opt.state[params[0]]["norm_sum_sq"] = opt.state[params[0]]["norm_sum_sq"].double()
        out.append([p.detach() for p in params])
    for a, b in zip(*out):
        torch.testing.assert_close(b, a)
