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
# Triton path, tests/test_cpu_kernels.py for the C path): a change before a step must be seen.
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
    return params, steady


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


PERTURBATIONS = [rebind_parameter, replace_state_tensor, freeze_then_thaw, reload_state]
