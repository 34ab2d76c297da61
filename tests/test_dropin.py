"""The default tier is a drop-in: nothing the user owns is rebound, and the opt-in flat buffers
notice a parameter the user rebinds, in every ``zero_grad`` mode."""

import pytest
import torch

from conftest import CONFIGS, config_id

import torchopt_zoo as zoo


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def train(model, opt, steps, set_to_none=True, start=0):
    for i in range(start, start + steps):
        opt.zero_grad(set_to_none=set_to_none)
        gen = torch.Generator().manual_seed(i)
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@pytest.mark.parametrize("set_to_none", [True, False])
def test_default_steps_leave_every_parameter_its_own_storage(cfg, set_to_none):
    cls, kw = cfg
    model = mlp()
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    opt = cls(model.parameters(), lr=1e-3, **kw)
    train(model, opt, 3, set_to_none)
    for p, ptr in zip(model.parameters(), storages):
        assert p.untyped_storage().data_ptr() == ptr  # never rebound
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
        if p.grad is not None:
            assert p.grad.untyped_storage().nbytes() == p.numel() * p.element_size()
    for state in opt.state.values():  # saving one state tensor writes only that tensor
        for value in state.values():
            if isinstance(value, torch.Tensor):
                assert value.untyped_storage().nbytes() == value.numel() * value.element_size()


def test_safetensors_round_trip_after_default_steps(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = mlp()
    opt = zoo.Adam(model.parameters(), lr=1e-2)
    train(model, opt, 3)
    path = str(tmp_path / "model.safetensors")
    safetensors_torch.save_model(model, path)
    restored = mlp(seed=1)
    safetensors_torch.load_model(restored, path)
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("rebind", ["data", "vector_to_parameters"])
def test_flat_buffers_notice_a_rebound_parameter(set_to_none, rebind):
    """After ``p.data = ...`` (or ``vector_to_parameters``) the parameter keeps training exactly as
    with the list tier; this fails if the flat buffers' O(1) check misses the rebinding."""
    runs = []
    for fused in ("flat", False):
        model = mlp()
        opt = zoo.Adam(model.parameters(), lr=1e-2, fused=fused)
        train(model, opt, 3, set_to_none)
        if rebind == "data":
            model[0].weight.data = model[0].weight.data.clone()
        else:
            vec = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
            torch.nn.utils.vector_to_parameters(vec, model.parameters())
        train(model, opt, 3, set_to_none, start=3)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_flat_buffers_are_an_opt_in_that_moves_parameters():
    model = mlp()
    opt = zoo.Adam(model.parameters(), lr=1e-2, fused="flat")
    train(model, opt, 2)
    (group,) = opt._fused.values()
    (bucket,) = group.buckets
    assert all(p.untyped_storage().data_ptr() == bucket.param.untyped_storage().data_ptr()
               for p in model.parameters())


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@pytest.mark.parametrize("tier", [{}, {"foreach": True}, {"foreach": False}], ids=["default", "foreach", "reference"])
def test_meta_device_parameters_step(cfg, tier):
    cls, kw = cfg
    params = [torch.nn.Parameter(torch.empty(3, 4, device="meta")), torch.nn.Parameter(torch.empty(5, device="meta"))]
    opt = cls(params, lr=1e-3, **tier, **kw)
    for _ in range(2):
        for p in params:
            p.grad = torch.empty_like(p)
        opt.step()
    assert all(p.is_meta for p in params)
    assert all(float(opt.state[p]["step"]) == 2 for p in params)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@pytest.mark.parametrize("amp", [False, True])
def test_default_steps_never_write_the_gradients(cfg, amp):
    """torch's fused kernels unscale gradients in place and some fold weight decay into them; the
    default tier hands them copies where that would write ``p.grad``."""
    cls, kw = cfg
    model = mlp()
    opt = cls(model.parameters(), lr=1e-3, **kw)
    if amp:
        opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(0.0)
    for i in range(3):
        opt.zero_grad()
        gen = torch.Generator().manual_seed(i)
        torch.nn.functional.cross_entropy(model(torch.randn(16, 6, generator=gen)),
                                          torch.randint(0, 3, (16,), generator=gen)).backward()
        before = [p.grad.clone() for p in model.parameters()]
        opt.step()
        for p, g in zip(model.parameters(), before):
            assert torch.equal(p.grad, g)
