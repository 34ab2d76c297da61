"""The default tier's Triton kernels over address tables (one launch per device and dtype, nothing
the user owns moved) against the reference tier, through Triton's interpreter on CPU tensors
(``TORCHOPT_ZOO_TRITON=1`` sends CPU parameters to the Triton path, as on CUDA)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import CONFIGS, PERTURBATIONS, config_id, perturbed_run

pytest.importorskip("triton")

shapes = st.lists(st.lists(st.integers(1, 40), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5)
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def run(cfg, init, grads, n_groups, *, set_to_none=True, **tier):
    cls, kw = cfg
    params = [t.clone().requires_grad_(g is not None) for t, g in zip(init, grads[0])]
    groups = [{"params": params[i::n_groups], "lr": 0.01 * (i + 1)} for i in range(n_groups)]
    opt = cls([g for g in groups if g["params"]], **tier, **kw)
    storages = [p.untyped_storage().data_ptr() for p in params]
    for step_grads in grads:
        opt.zero_grad(set_to_none=set_to_none)
        for p, g in zip(params, step_grads):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        opt.step()
    assert [p.untyped_storage().data_ptr() for p in params] == storages  # nothing rebound
    return params, opt


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_table_kernels_match_reference(cfg, data, dtype):
    shape_list, n_groups = data.draw(shapes), data.draw(st.integers(1, 3))
    steps, seed = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 2**31 - 1))
    frozen = data.draw(st.lists(st.booleans(), min_size=len(shape_list), max_size=len(shape_list)))
    set_to_none = data.draw(st.booleans())
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen).to(dtype) for s in shape_list]
    grads = [[None if f else torch.randn(s, generator=gen).to(dtype) for s, f in zip(shape_list, frozen)]
             for _ in range(steps)]
    ref_params, ref = run(cfg, init, grads, n_groups, set_to_none=set_to_none, foreach=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHOPT_ZOO_TRITON", "1")
        params, opt = run(cfg, init, grads, n_groups, set_to_none=set_to_none)
    if any(not f for f in frozen):
        assert opt._tables  # the step took the address tables
    for a, b in zip(ref_params, params):
        torch.testing.assert_close(b.detach(), a.detach(), **TOL[dtype])
    sa, sb = ref.state_dict()["state"], opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key in sa[i]:
            torch.testing.assert_close(sb[i][key].cpu().to(sa[i][key].dtype), sa[i][key], **TOL[dtype])


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=config_id)
def test_amp_found_inf_skips_the_table_step_on_the_device(cfg, monkeypatch):
    monkeypatch.setenv("TORCHOPT_ZOO_TRITON", "1")
    cls, kw = cfg
    params = [torch.randn(5, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    opt = cls(params, lr=0.01, **kw)
    for p in params:
        p.grad = torch.randn_like(p) * 4
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(0.0)
    opt.step()
    before = [p.detach().clone() for p in params], {k: v.clone() for k, v in opt.state[params[0]].items()}
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before[0], params))
    assert all(torch.equal(v, opt.state[params[0]][k]) for k, v in before[1].items())
    assert float(opt.state[params[0]]["step"]) == 1.0


@pytest.mark.parametrize("perturb", PERTURBATIONS)
def test_the_steady_state_check_sees_what_changed(perturb, monkeypatch):
    """The steady-state path checks the parameters' addresses and the state objects before it
    launches over the old tables: each change takes the slow path (and new tables) and the run
    matches the reference tier."""
    ref, _ = perturbed_run(perturb, foreach=False)
    monkeypatch.setenv("TORCHOPT_ZOO_TRITON", "1")
    params, steady = perturbed_run(perturb)
    assert steady  # the steps before the change took the group's tables
    for a, b in zip(ref, params):
        torch.testing.assert_close(b.detach(), a.detach(), **TOL[torch.float32])
