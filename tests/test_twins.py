"""The rules added as one module each, against their oracles in float64: NAdam, RAdam, Adamax and
Adadelta against torch.optim with every option set torch's own OptimizerInfo tries, in every tier;
Lion against the ``lion-pytorch`` package (its authors' reference implementation)."""

import inspect

import pytest
import torch

import torchopt_zoo as zoo

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

TWINS = [cls for cls in zoo.OPTIMIZERS if cls in (zoo.NAdam, zoo.RAdam, zoo.Adamax, zoo.Adadelta)]


def torch_inputs(cls):
    """The constructor kwargs torch's OptimizerInfo of ``cls.twin`` tries on CPU."""
    (info,) = [i for i in common_optimizers.optim_db if i.optim_cls is cls.twin]
    return [o.kwargs for o in info.optim_inputs_func(device="cpu")]


CASES = [(cls, kw) for cls in TWINS for kw in torch_inputs(cls)]


def _quartic(xs):
    """A non-quadratic loss (gradients change between steps) over several tensors."""
    return sum((x ** 4 - x ** 2 + 0.5 * x).sum() for x in xs)


def run(make, init, steps=25):
    params = [t.clone().requires_grad_() for t in init]
    opt = make(params)
    for _ in range(steps):
        opt.zero_grad()
        _quartic(params).backward()
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("tier", [dict(foreach=False), dict(foreach=True), {}], ids=["reference", "foreach", "default"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].__name__ + "".join(f"-{k}={v}" for k, v in c[1].items()))
def test_matches_torch_in_float64_with_every_optimizer_info_input(case, tier):
    cls, kw = case
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(4, 3), (5,), (2, 2, 2)]]
    zoo_params, zoo_opt = run(lambda p: cls(p, **kw, **tier), init)
    ref_params, ref_opt = run(lambda p: cls.twin(p, **kw), init)
    for a, b in zip(zoo_params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    zs, ts = zoo_opt.state_dict()["state"], ref_opt.state_dict()["state"]  # the state_dicts interchange
    assert zs.keys() == ts.keys()
    for i in ts:
        assert list(zs[i]) == list(ts[i])
        for key in ts[i]:
            torch.testing.assert_close(zs[i][key], ts[i][key], rtol=1e-10, atol=1e-10)


def test_twins_take_torchs_constructor_signature():
    for cls in TWINS:
        ours = inspect.signature(cls).parameters
        theirs = inspect.signature(cls.twin).parameters
        for name, param in theirs.items():
            if name in ("capturable", "differentiable"):  # not yet accepted by the zoo
                continue
            assert name in ours, f"{cls.__name__} lacks torch's argument {name}"
            assert ours[name].default == param.default, (cls.__name__, name)


lion_pytorch = pytest.importorskip("lion_pytorch")


@pytest.mark.parametrize("tier", [dict(foreach=False), dict(foreach=True), {}], ids=["reference", "foreach", "default"])
@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.3}, {"weight_decay": 0.1, "betas": (0.95, 0.98), "lr": 3e-3}],
                         ids=["plain", "weight_decay", "betas"])
def test_lion_matches_lion_pytorch_in_float64(kw, tier):
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(6, 5), (7,)]]
    zoo_params, _ = run(lambda p: zoo.Lion(p, **kw, **tier), init, steps=40)
    ref_params, _ = run(lambda p: lion_pytorch.Lion(p, **kw), init, steps=40)
    for a, b in zip(zoo_params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
