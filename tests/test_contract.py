"""The drop-in contract every zoo optimizer keeps: p.grad untouched and never aliased,
clear errors for bad input, sparse gradients refused, NaN behaves as in torch."""

import pytest
import torch

import torchopt_zoo as zoo
from conftest import CONFIGS  # noqa: F401  (the `config` fixture sweeps it)


def _step_twice(opt, params, grads):
    for _ in range(2):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_never_writes_or_aliases_grad(config, foreach):
    cls, kw = config
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    grads = [torch.randn(4, 3), torch.randn(5)]
    kept = [g.clone() for g in grads]
    opt = cls(params, lr=0.1, foreach=foreach, **kw)
    _step_twice(opt, params, grads)
    for g, k in zip(grads, kept):
        assert torch.equal(g, k), "p.grad was modified"
    grad_storages = {g.untyped_storage().data_ptr() for g in grads}
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                assert value.untyped_storage().data_ptr() not in grad_storages, "state aliases p.grad"
    # the gradient may be zeroed in place afterwards without changing the optimizer's state
    before = {k: v.clone() for s in opt.state.values() for k, v in s.items()}
    for g in grads:
        g.zero_()
    after = {k: v for s in opt.state.values() for k, v in s.items()}
    for k in before:
        assert torch.equal(before[k], after[k])


def test_sparse_gradients_are_refused_where_the_rule_has_no_sparse_step(config):
    cls, kw = config
    if cls.rule.sparse is not None:
        pytest.skip("the rule takes sparse gradients (tests/test_torch_parity.py)")
    p = torch.zeros(5, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0, 2]], [1.0, 2.0], (5,))
    with pytest.raises(RuntimeError, match=f"{cls.__name__} does not support sparse gradients"):
        cls([p], lr=0.1, **kw).step()


def test_params_without_grad_are_skipped_and_keep_no_state(config):
    cls, kw = config
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = cls([a, b], lr=0.1, **kw)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3))
    assert "step" not in opt.state[b]


def test_nan_gradient_propagates_like_torch():
    # A plain step does not inspect gradients (no host sync): NaN flows into the parameter, as in torch.
    for zcls, tcls in [(zoo.Adam, torch.optim.Adam), (zoo.Adagrad, torch.optim.Adagrad)]:
        a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
        oa, ob = zcls([a]), tcls([b])
        for x, o in ((a, oa), (b, ob)):
            x.grad = torch.tensor([float("nan"), 1.0, 1.0])
            o.step()
        torch.testing.assert_close(a, b, equal_nan=True)


BAD = [
    (zoo.Adam, {"lr": -1e-3}, r"Invalid lr value: -0\.001; allowed range is \[0\.0, inf\)"),
    (zoo.Adam, {"betas": (1.0, 0.999)}, r"Invalid beta parameter at index 0: 1\.0 \(betas\[0\]\); allowed range is \[0\.0, 1\.0\)"),
    (zoo.Adam, {"betas": (0.9, -0.1)}, r"Invalid beta parameter at index 1"),
    (zoo.Adam, {"betas": (0.9,)}, r"Invalid betas"),
    (zoo.Adam, {"eps": -1e-8}, r"Invalid eps"),
    (zoo.Adam, {"weight_decay": -0.1}, r"Invalid weight_decay"),
    (zoo.Adam, {"lr": float("nan")}, r"Invalid lr"),
    (zoo.Adam, {"foreach": "yes"}, r"Invalid foreach value: 'yes'; allowed values are None, True, False"),
    (zoo.AdaBelief, {"eps_mode": "paper"}, r"Invalid eps_mode value: 'paper'; allowed values are 'torch', 'original'"),
    (zoo.DiffGrad, {"eps_mode": "Torch"}, r"Invalid eps_mode"),
    (zoo.Adagrad, {"lr_decay": -1.0}, r"Invalid lr_decay"),
    (zoo.Adagrad, {"initial_accumulator_value": -1.0}, r"Invalid initial_accumulator_value"),
    (zoo.AdaGradNorm, {"b0": 0.0}, r"Invalid b0 value: 0\.0; allowed range is \(0\.0, inf\)"),
    (zoo.RMSprop, {"alpha": 1.5}, r"Invalid alpha"),
    (zoo.RMSprop, {"momentum": -0.5}, r"Invalid momentum"),
    (zoo.GD, {"momentum": -0.5}, r"Invalid momentum"),
    (zoo.GD, {"nesterov": True}, r"nesterov=True requires momentum > 0"),
    (zoo.Adam, {"lr": torch.tensor([1e-3, 1e-3])}, r"Tensor lr must be 1-element"),
]


@pytest.mark.parametrize("cls,kw,msg", BAD, ids=[f"{c.__name__}-{list(k)[0]}" for c, k, _ in BAD])
def test_bad_arguments_name_the_argument_and_range(cls, kw, msg):
    with pytest.raises(ValueError, match=msg):
        cls([torch.zeros(2, requires_grad=True)], **kw)


def test_bad_param_group_is_rejected_before_it_is_added():
    opt = zoo.Adam([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=r"Invalid lr"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": -1.0})
    assert len(opt.param_groups) == 1


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="amsgard"):
        zoo.Adam([torch.zeros(2, requires_grad=True)], amsgard=True)


def test_readme_optimizer_table_is_the_registry():
    """The README's optimizer table is generated from the registry (torchopt_zoo.rules.table()):
    a registered rule missing from it, or a stale row, fails here."""
    import pathlib

    from torchopt_zoo import rules

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    assert rules.table() in readme
    assert len(readme) <= 15_000


def test_readme_claims_table_is_the_last_full_run():
    """The README's claims table is the one ``python -m bench --readme README.md`` wrote from the
    claims of the run in docs/bench (the report's run): hand edits or a stale table fail here."""
    import json
    import pathlib
    import sys

    root = pathlib.Path(__file__).parent.parent
    sys.path.insert(0, str(root))
    from bench.__main__ import QUESTIONS, claims_table

    claims = {name: json.loads((root / "docs" / "bench" / f"{name}.claims.json").read_text()) for name in QUESTIONS}
    assert claims_table(claims) in (root / "README.md").read_text()
