"""The multi-tensor tier agrees with the per-tensor reference on random shapes, dtypes and options."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import CONFIGS, config_id  # noqa: F401

import pytest

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@given(shapes=shapes, dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64]),
       seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 4))
def test_foreach_matches_reference(cfg, shapes, dtype, seed, steps):
    cls, kw = cfg
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]
    results = []
    for foreach in (False, True, None):  # reference, foreach over lists, foreach over flat state
        params = [t.clone().requires_grad_(True) for t in init]
        opt = cls(params, lr=0.01, foreach=foreach, **kw)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        results.append(([p.detach() for p in params], opt.state_dict()["state"]))
    (p_ref, s_ref), *others = results
    tol = dict(rtol=1e-5, atol=1e-6) if dtype != torch.float64 else dict(rtol=1e-12, atol=1e-12)
    for p_fe, s_fe in others:
        for a, b in zip(p_ref, p_fe):
            torch.testing.assert_close(b, a, **tol)
        assert s_fe.keys() == s_ref.keys()
        for i in s_ref:
            assert s_fe[i].keys() == s_ref[i].keys()
            for key in s_ref[i]:
                torch.testing.assert_close(s_fe[i][key], s_ref[i][key], **tol)
