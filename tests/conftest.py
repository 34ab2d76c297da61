import os

# Triton kernels run on CPU tensors through Triton's interpreter unless a GPU is present; the
# variable must be set before the kernels are defined (tests/test_fused.py).
if not os.environ.get("TRITON_INTERPRET"):
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch
from hypothesis import HealthCheck, settings

import torchopt_zoo as zoo

# CI draws the same examples every run (derandomize), so a submission's result does not depend
# on luck; HYPOTHESIS_PROFILE=thorough explores 500 fresh ones per test.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))

# The default tier's compiled steady-state check is built (or found in the cache) before any test
# runs, so every test, and every process a test starts, takes the same path from its first step.
from torchopt_zoo.tiers import host as _host  # noqa: E402

_host.checker(wait=True)

# Every registered zoo optimizer with the option sets its rule module declares (constructor kwargs
# beyond lr): a new rule is swept by every test that reads CONFIGS.
CONFIGS = [(cls, kw) for cls in zoo.OPTIMIZERS for kw in cls.configs]


def config_id(cfg):
    cls, kw = cfg
    return cls.__name__ + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.fixture(params=CONFIGS, ids=config_id)
def config(request):
    return request.param


# The steady-state checks of the default tier's address tables (tests/test_table.py for the
# Triton path, tests/test_cpu_kernels.py for the C path): a change before a step must be seen, by
# the compiled check (tiers/host.py) and by its Python reference alike.
@pytest.fixture(params=["compiled", "python"])
def host_check(request, monkeypatch):
    from torchopt_zoo.tiers import host

    if request.param == "compiled":
        if host.checker(wait=True) is None:
            pytest.skip("the compiled steady-state check cannot be built here (no C compiler or Python.h)")
    else:
        monkeypatch.setenv("TORCHOPT_ZOO_HOST_CHECK", "0")
    return request.param


def perturbed_run(perturb, cls=zoo.Adam, **tier):
    """``cls`` (Adam) over three tensors for four steps; ``perturb(opt, params, step)`` runs before each
    step's gradients are set (a rebound parameter, a replaced state tensor, a frozen tensor)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in ((5,), (3, 4), (7,))]
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(4)]
    opt = cls(params, lr=0.1, **tier)
    steady = False
    for step, gs in enumerate(grads):
        opt.zero_grad()
        steady |= bool(opt._group_tables)
        perturb(opt, params, step)
        for p, g in zip(params, gs):
            if p.requires_grad:
                p.grad = g.clone()
        opt.step()
    return params, opt, steady


def assert_perturbed_runs_match(perturb, cls, tol):
    """The default tier's run with ``perturb`` took the group's table before the change and ends
    with the parameters and state of the reference tier's run."""
    ref_params, ref, _ = perturbed_run(perturb, cls, foreach=False)
    params, opt, steady = perturbed_run(perturb, cls)
    assert steady  # the steps before the change took the group's table
    assert_same_run(ref_params, ref, params, opt, tol)


def rebind_parameter(opt, params, step):
    if step == 2:
        params[1].data = params[1].data.clone()


def replace_state_tensor(opt, params, step):
    if step == 2:
        state = opt.state[params[0]]
        key = next(k for k in state if k != "step")  # exp_avg, or AdaGradNorm's group-wide sum
        state[key] = state[key].clone()


def freeze_then_thaw(opt, params, step):
    params[2].requires_grad_(step != 2)


def reload_state(opt, params, step):
    if step == 2:
        opt.load_state_dict(opt.state_dict())


def replace_state_dict(opt, params, step):
    if step == 2:  # a new dict of new tensors for one parameter: the mapping itself changed
        opt.state[params[1]] = {k: v.clone() for k, v in opt.state[params[1]].items()}


PERTURBATIONS = [rebind_parameter, replace_state_tensor, replace_state_dict, freeze_then_thaw, reload_state]


# The default tier's kernels over address tables against the reference tier (tests/test_table.py
# for Triton, tests/test_cpu_kernels.py for C): random shapes, groups, frozen tensors, steps.
def run_groups(cfg, init, grads, n_groups, *, set_to_none=True, scale=None, **tier):
    """``cfg``'s optimizer over ``init`` split into ``n_groups`` groups (lr 0.01, 0.02, ...), fed
    ``grads`` (per step, None for a frozen tensor), with AMP's ``scale`` if given; checks that no
    parameter was rebound. Returns the parameters and the optimizer."""
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
        if scale is not None:  # AMP's unscaling, as GradScaler hands it to the step
            opt.grad_scale, opt.found_inf = torch.tensor(scale), torch.tensor(0.0)
        opt.step()
    assert [p.untyped_storage().data_ptr() for p in params] == storages  # nothing rebound
    return params, opt


def draw_table_case(data, dtype, max_steps, scales=(None,)):
    """Hypothesis' draw of a case for :func:`run_groups`: ``(init, grads, n_groups, kwargs)``."""
    from hypothesis import strategies as st
    shape_list = data.draw(st.lists(st.lists(st.integers(1, 40), min_size=0, max_size=3).map(tuple),
                                    min_size=1, max_size=5))
    n_groups, steps = data.draw(st.integers(1, 3)), data.draw(st.integers(1, max_steps))
    seed = data.draw(st.integers(0, 2**31 - 1))
    frozen = data.draw(st.lists(st.booleans(), min_size=len(shape_list), max_size=len(shape_list)))
    kwargs = dict(set_to_none=data.draw(st.booleans()), scale=data.draw(st.sampled_from(scales)))
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen).to(dtype) for s in shape_list]
    grads = [[None if f else torch.randn(s, generator=gen).to(dtype) * (kwargs["scale"] or 1)
              for s, f in zip(shape_list, frozen)] for _ in range(steps)]
    return init, grads, n_groups, kwargs


def assert_same_run(ref_params, ref, params, opt, tol):
    """Parameters and every state tensor of two runs within ``tol``."""
    for a, b in zip(ref_params, params):
        torch.testing.assert_close(b.detach(), a.detach(), **tol)
    sa, sb = ref.state_dict()["state"], opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key in sa[i]:
            torch.testing.assert_close(sb[i][key].cpu().to(sa[i][key].dtype), sa[i][key], **tol)


def assert_found_inf_skips(cls, kw):
    """A step with AMP's ``found_inf`` set leaves parameters, state and the step count as they were."""
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
