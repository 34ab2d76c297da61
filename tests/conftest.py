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
