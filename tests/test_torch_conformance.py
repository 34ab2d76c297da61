"""torch's generic optimizer checks, run on torch's classes and on the zoo's twins alike.

Driven by the ``OptimizerInfo`` entries that ship with the installed torch
(``torch.testing._internal.common_optimizers.optim_db``): their option sets, error inputs,
schedulers, supported implementations and flags, with ``optim_cls`` swapped for the zoo's class.
The checks are the families of torch's own optimizer test suite (``TestOptimRenewed``), written
here against the public optimizer API: errors, the for-loop going the right way (with schedulers,
non-contiguous parameters), tensor ``lr``, sparse gradients, complex parameters, foreach and fused
against the for-loop (frozen layers, ``None`` gradients, an empty parameter), param groups, no-op
steps, state_dict determinism, older and named state_dicts, ``weights_only`` loads, hooks and
deepcopy. Every check runs for ``impl="torch"`` too, so the counts compare directly. Only checks
that need CUDA are left out (the fused and capturable kernels on CUDA). A new twin is covered by
adding its torch name to ``TWINS``.
"""

from __future__ import annotations

import copy
import inspect
import re
import tempfile

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from torchopt_zoo.core.rule import OPTIMIZERS

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")
OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum
_all_inputs = common_optimizers._get_optim_inputs_including_global_cliquey_kwargs

TWINS = ["Adam", "AdamW", "Adagrad", "RMSprop", "SGD", "NAdam", "RAdam", "Adamax", "Adadelta"]
ZOO = {cls.twin.__name__: cls for cls in OPTIMIZERS if cls.twin is not None}
DEVICE = "cpu"


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # torch's TestCase seeds every test


@pytest.fixture(params=["torch", "zoo"])
def impl(request):
    return request.param


@pytest.fixture(params=TWINS)
def info(request, impl):
    """torch's OptimizerInfo for the twin, ``optim_cls`` swapped for the zoo's class where impl="zoo"."""
    (entry,) = [i for i in common_optimizers.optim_db if i.optim_cls.__name__ == request.param]
    entry = copy.copy(entry)
    if impl == "zoo":
        entry.optim_cls = ZOO[request.param]
    return entry


def test_every_twin_is_checked():
    assert sorted(ZOO) == sorted(TWINS)


def assert_same(a, b, **kw):
    """Tensors close (torch's default tolerances per dtype), everything else equal, recursively."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k], **kw)
    elif isinstance(a, (list, tuple)) and not all(isinstance(x, (int, float)) for x in a):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, **kw)
    elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        torch.testing.assert_close(a, b, **kw)
    else:
        assert a == b


def weight_bias(dtype=torch.float32, contiguous=True):
    if contiguous:
        return Parameter(torch.randn(10, 5, dtype=dtype)), Parameter(torch.randn(10, dtype=dtype))
    return (Parameter(torch.randn(10, 5, 2, dtype=dtype)[..., 0]),
            Parameter(torch.randn(10, 2, dtype=dtype)[..., 0]))


def quadratic(optimizer, w, b, x):
    def closure():
        optimizer.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        return loss
    return closure


def run_schedulers(schedulers, loss):
    for s in schedulers:
        s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()


def moved_right_way(kwargs, before, after):
    return after > before if kwargs.get("maximize", False) else after < before


# ------------------------------------------------------------------ errors
def test_errors(info):
    for error in info.optim_error_inputs_func(device=DEVICE, dtype=torch.float32):
        inp = error.optimizer_error_input
        expect = (pytest.warns(error.error_type, match=error.error_regex)
                  if issubclass(error.error_type, Warning)
                  else pytest.raises(error.error_type, match=error.error_regex))
        if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            with expect:
                info.optim_cls(inp.params, **inp.kwargs)
        else:
            optimizer = info.optim_cls(inp.params, **inp.kwargs)
            with expect:
                optimizer.step()


# ------------------------------------------------------------------ the update goes the right way
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("with_lrsched", [True, False])
def test_forloop_goes_right_direction(info, contiguous, with_lrsched):
    for schedulers_c in (info.scheduler_inputs if with_lrsched else [[]]):
        for inp in info.optim_inputs_func(device=DEVICE):
            kwargs = {**inp.kwargs, "foreach": False}
            w, b = weight_bias(contiguous=contiguous)
            optimizer = info.optim_cls([w, b], **kwargs)
            schedulers = [s(optimizer) for s in schedulers_c]
            closure = quadratic(optimizer, w, b, torch.randn(5))
            initial = closure().item()
            for _ in range(20):
                loss = closure()
                optimizer.step()
                run_schedulers(schedulers, loss)
            assert moved_right_way(kwargs, initial, closure().item()), inp.desc


def test_param_group_with_lrscheduler_goes_right_direction(info):
    for schedulers_c in info.scheduler_inputs:
        w, b = weight_bias()
        optimizer = info.optim_cls([{"params": [w]}, {"params": [b], "lr": 0.01}])
        schedulers = [s(optimizer) for s in schedulers_c]
        closure = quadratic(optimizer, w, b, torch.randn(5))
        initial = closure().item()
        for _ in range(20):
            run_schedulers(schedulers, optimizer.step(closure))
        assert closure().item() < initial


def test_tensor_lr(info):
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        w, b = weight_bias()
        wc, bc = (t.detach().clone().requires_grad_(True) for t in (w, b))
        x = torch.randn(5)
        kwargs = {**inp.kwargs, "lr": 1e-3}
        reference = info.optim_cls([w, b], **kwargs)
        try:
            optimizer = info.optim_cls([wc, bc], **{**kwargs, "lr": torch.tensor(1e-3)})
        except ValueError as e:
            assert re.search("lr as a Tensor is not supported", str(e))
            continue
        for _ in range(5):
            quadratic(reference, w, b, x)()
            quadratic(optimizer, wc, bc, x)()
            reference.step()
            optimizer.step()
            assert_same(w, wc)
            assert_same(b, bc)


# ------------------------------------------------------------------ sparse gradients (Rosenbrock, cyclic coordinates)
def rosenbrock(t):
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def drosenbrock(t):
    x, y = t
    return torch.stack((-400 * x * (y - x ** 2) - 2 * (1 - x), 200 * (y - x ** 2)))


def coordinate_grad(param, sparse, w):
    """The x (w=1) or the y gradient alone; sparse ones uncoalesced, as torch's check does."""
    grad = drosenbrock(param.detach())
    if not sparse:
        return torch.stack((grad[0], torch.zeros(()))) if w else torch.stack((torch.zeros(()), grad[1]))
    i, v = (([[0, 0]], [grad[0] / 4, grad[0] - grad[0] / 4]) if w
            else ([[1, 1]], [grad[1] - grad[1] / 4, grad[1] / 4]))
    return torch.sparse_coo_tensor(torch.tensor(i), torch.stack(v), (2,))


@pytest.mark.parametrize("with_lrsched", [True, False])
def test_rosenbrock_sparse(info, with_lrsched):
    if not info.supports_sparse:
        pytest.skip(f"torch's {info.optim_cls.__name__} takes no sparse gradients")
    updates, schedulers_c = info.metadata_for_sparse
    if with_lrsched and not schedulers_c:
        pytest.skip("no scheduler for the sparse check")
    seen, inputs = set(), []
    for inp in _all_inputs(DEVICE, torch.float64, info, skip=("differentiable", "fused")):
        kwargs = {k: v for k, v in inp.kwargs.items() if k not in updates}
        key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        if kwargs and key not in seen:
            seen.add(key)
            inputs.append({**kwargs, **({"lr": updates["lr"]} if "lr" in updates else {})})
    for kwargs in inputs:
        start = [torch.tensor([1.5, 1.5]), torch.tensor([1.5, 1.5], dtype=torch.float64)][:2 if kwargs.get("foreach") else 1]
        params = [Parameter(t.clone()) for t in start]
        dense = [Parameter(t.clone()) for t in start]
        opt, opt_d = info.optim_cls(params, **kwargs), info.optim_cls(dense, **kwargs)
        scheds = [s(opt) for s in (schedulers_c if with_lrsched else [])]
        scheds_d = [s(opt_d) for s in (schedulers_c if with_lrsched else [])]
        initial = sum(p.detach().dist(torch.tensor([1.0, 1.0])) for p in params)
        for i in range(1800):
            for ps, o, ss, sparse in ((params, opt, scheds, True), (dense, opt_d, scheds_d, False)):
                for p in ps:
                    p.grad = coordinate_grad(p, sparse, i % 2)
                o.step()
                run_schedulers(ss, rosenbrock(ps[0].detach()))
            assert_same(params, dense, atol=5e-6, rtol=5e-6)
        if kwargs.get("maximize", False):
            assert sum(rosenbrock(p.detach()) for p in params) >= sum(rosenbrock(t) for t in start)
        else:
            assert sum(p.detach().dist(torch.tensor([1.0, 1.0])) for p in params) <= initial


# ------------------------------------------------------------------ complex parameters
def test_complex(info):
    if not info.supports_complex:
        pytest.skip("no complex support in torch's twin")
    for inp in _all_inputs(DEVICE, torch.complex64, info, skip=("differentiable", "fused")):
        cplx = [torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
                torch.randn(10, dtype=torch.complex64, requires_grad=True),
                torch.randn(10, 5, requires_grad=True)]
        real = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_() for p in cplx]
        opt_c, opt_r = info.optim_cls(cplx, **inp.kwargs), info.optim_cls(real, **inp.kwargs)
        for _ in range(3):
            for pc, pr in zip(cplx, real):
                pr.grad = torch.randn_like(pr)
                pc.grad = torch.view_as_complex(pr.grad.clone()) if pc.is_complex() else pr.grad.clone()
            opt_r.step()
            opt_c.step()
            assert_same([torch.view_as_real(p) if p.is_complex() else p for p in cplx], real)


def test_complex_2d(info):
    if not info.supports_complex:
        pytest.skip("no complex support in torch's twin")
    for inp in _all_inputs(DEVICE, torch.complex64, info, skip=("differentiable", "fused")):
        a = torch.randn(2, dtype=torch.complex64, requires_grad=True)
        re_, im = a.real.detach().clone().requires_grad_(), a.imag.detach().clone().requires_grad_()
        opt1, opt2 = info.optim_cls([a], **inp.kwargs), info.optim_cls([re_, im], **inp.kwargs)
        for _ in range(3):
            opt1.zero_grad()
            opt2.zero_grad()
            rosenbrock(a).abs().backward()
            rosenbrock(torch.complex(re_, im)).abs().backward()
            assert_same(a.grad.real, re_.grad)
            assert_same(a.grad.imag, im.grad)
            opt1.step()
            opt2.step()
            assert_same(a.real, re_)
            assert_same(a.imag, im)


# ------------------------------------------------------------------ foreach and fused against the for-loop
def small_model(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1),
                                torch.nn.Sigmoid()).to(dtype)
    last = torch.rand((), dtype=dtype, requires_grad=True)  # a 0-dim last param, as torch's check
    last.grad = torch.rand_like(last)
    return model, list(model.parameters()) + [last]


def tolerances(info, test_name, dtype) -> dict:
    """The tolerances torch's OptimizerInfo sets for one of its checks and dtype (none: the defaults)."""
    for decorate in info.decorators:
        if decorate.test_name == test_name:
            for override in decorate.decorators:
                if dtype in getattr(override, "d", {}):
                    return {"atol": override.d[dtype].atol, "rtol": override.d[dtype].rtol}
    return {}


def compare_implementations(info, dtype, flag, test_name):
    """7 steps with ``flag`` False and True: layer 2 frozen at steps 3-4, no gradients at step 2;
    the parameters and every state tensor agree after each step (then the second run takes the
    first run's values, as torch's check does, so rounding does not compound over the steps)."""
    tol = tolerances(info, test_name, dtype)
    for inp in info.optim_inputs_func(device=DEVICE, dtype=dtype):
        if inp.kwargs.get("capturable", False):
            continue
        runs = []
        for value in (False, True):
            model, params = small_model(dtype)
            runs.append((model, params, info.optim_cls(params, **{**inp.kwargs, flag: value})))
        x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
        for i in range(7):
            for model, _, optimizer in runs:
                optimizer.zero_grad()
                if i in (3, 5):
                    model[2].requires_grad_(i == 5)
                if i != 2:
                    model(x).sum().backward()
                optimizer.step()
            (_, ps0, o0), (_, ps1, o1) = runs
            for p0, p1 in zip(ps0, ps1):
                assert_same(p0, p1, **tol)
                assert o0.state[p0].keys() == o1.state[p1].keys()
                with torch.no_grad():
                    p1.copy_(p0)
                for k in o0.state[p0]:
                    assert_same(o0.state[p0][k], o1.state[p1][k], **tol)
                    o1.state[p1][k].copy_(o0.state[p0][k])


def test_foreach_matches_forloop(info):
    if "foreach" not in info.supported_impls:
        pytest.skip("no foreach implementation in torch's twin")
    compare_implementations(info, torch.float64, "foreach", "test_foreach_matches_forloop")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_fused_matches_forloop(info, dtype):
    if "fused" not in info.supported_impls or DEVICE not in info.supports_fused_on:
        pytest.skip("no fused CPU implementation in torch's twin")
    compare_implementations(info, dtype, "fused", "test_fused_matches_forloop")


def test_fused_error_on_params_on_meta(info):
    if "fused" not in info.supported_impls or DEVICE not in info.supports_fused_on:
        pytest.skip("no fused CPU implementation in torch's twin")
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
    optimizer = info.optim_cls(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.to_empty(device=DEVICE)
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    optimizer.step()


def test_fused_does_not_step_if_found_inf(info):
    if "fused" not in info.supported_impls or DEVICE not in info.supports_fused_on:
        pytest.skip("no fused CPU implementation in torch's twin")
    for inp in info.optim_inputs_func(device=DEVICE):
        for scaled in (False, True):
            params = [torch.ones(1) for _ in range(5)]
            before = [p.clone() for p in params]
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer = info.optim_cls(params, fused=True, **inp.kwargs)
            optimizer.grad_scale = torch.ones(1) if scaled else None
            optimizer.found_inf = torch.ones(())
            optimizer.step()
            for p in params:
                if "step" in optimizer.state[p]:
                    assert_same(optimizer.state[p]["step"], torch.zeros(()))
            assert_same(params, before)


# ------------------------------------------------------------------ param groups and no-op steps
def test_param_groups_weight_decay(info):
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        w, b = weight_bias()
        x = torch.randn(5)
        optimizer = info.optim_cls([dict(params=[w], **inp.kwargs), dict(params=[b], **{**inp.kwargs,
                                                                                         "weight_decay": 0.0})])
        initial = (w.mv(x) + b).pow(2).sum().item()
        for _ in range(20):
            loss = quadratic(optimizer, w, b, x)()
            optimizer.step()
        assert moved_right_way(inp.kwargs, initial, loss.item())


def test_param_groups_lr(info):
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        kwargs = inp.kwargs if inp.kwargs.get("lr", 0) != 0 else {**inp.kwargs, "lr": 1e-3}
        w, b = weight_bias()
        other = Parameter(torch.randn(2))
        other_before = other.detach().clone()
        x = torch.randn(5)
        optimizer = info.optim_cls([dict(params=[w, b], **kwargs), dict(params=[other])], lr=1e-28)
        initial = (w.mv(x) + b).pow(2).sum().item()
        for _ in range(20):
            loss = quadratic(optimizer, w, b, x)()
            other.grad = torch.rand_like(other)
            optimizer.step()
        assert moved_right_way(kwargs, initial, loss.item())
        assert_same(other.detach(), other_before)


def test_step_is_noop_when_params_have_no_grad(info):
    params = [torch.randn(2, 3) for _ in range(2)]
    before = [p.clone() for p in params]
    for inp in _all_inputs(DEVICE, torch.float32, info):
        info.optim_cls(params, **inp.kwargs).step(lambda: torch.tensor([1.0]))
    assert_same(params, before)


def test_step_is_noop_for_zero_grads(info):
    param = torch.randn(5, 1, requires_grad=True)
    before = param.detach().clone()
    for inp in _all_inputs(DEVICE, torch.float32, info):
        kwargs = dict(inp.kwargs)
        if kwargs.get("weight_decay", 0) != 0:
            continue
        if info.optim_cls.__name__ == "AdamW":
            kwargs["lr"] = torch.tensor(1e-5) if isinstance(kwargs.get("lr"), torch.Tensor) else 1e-5
        params = [param.clone()] if kwargs.get("differentiable", False) else [param]
        optimizer = info.optim_cls(params, **kwargs)
        params[0].grad = torch.zeros_like(params[0])
        optimizer.step(lambda: torch.tensor([1.0]))
        assert_same(params[0].detach(), before)


def test_optimizer_can_be_printed(info):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for inp in _all_inputs(DEVICE, torch.float32, info):
        assert info.optim_cls.__name__ in repr(info.optim_cls(params, **inp.kwargs))


def test_non_empty_state(info):
    for inp in info.optim_inputs_func(device=DEVICE):
        model = torch.nn.Linear(5, 5)
        optimizer = info.optim_cls(model.parameters(), **inp.kwargs)
        model(torch.rand(2, 5)).sum().backward()
        optimizer.step()
        assert all(len(state) > 0 for state in optimizer.state.values())


# ------------------------------------------------------------------ state_dict
def named(params, is_named):
    return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else params


def without_names(state_dict):
    state_dict = copy.deepcopy(state_dict)
    for group in state_dict["param_groups"]:
        group.pop("param_names", None)
    return state_dict


@pytest.mark.parametrize("named0", [True, False])
@pytest.mark.parametrize("named1", [True, False])
def test_state_dict_deterministic(info, named0, named1):
    w = Parameter(torch.randn(2, 3))
    b = Parameter(torch.randn(2))
    x = torch.randn(3)
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        optimizer = info.optim_cls(named([w, b], named0), **inp.kwargs)
        closure = quadratic(optimizer, w, b, x)
        for _ in range(10):
            closure()
            optimizer.step()
        with torch.no_grad():
            wc, bc = Parameter(w.clone()), Parameter(b.clone())
        optimizer_c = info.optim_cls(named([wc, bc], named1), **inp.kwargs)
        closure_c = quadratic(optimizer_c, wc, bc, x)
        optimizer_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for _ in range(10):
            closure()
            closure_c()
            optimizer.step()
            optimizer_c.step()
            assert_same(w, wc)
            assert_same(b, bc)
        assert_same(without_names(optimizer.state_dict()), without_names(optimizer_c.state_dict()))
        optimizer_c.param_groups.extend(optimizer_c.param_groups)  # repeated parameters, one representation
        assert_same(without_names(optimizer.state_dict())["param_groups"][-1],
                    without_names(optimizer_c.state_dict())["param_groups"][-1])


def conv_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))


def train_steps(optimizer, model, steps=3):
    x = torch.rand(1, 4, 16, 16)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()


def test_can_load_older_state_dict(info):
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        model = conv_model()
        optimizer = info.optim_cls(model.parameters(), **inp.kwargs)
        train_steps(optimizer, model)
        old = copy.deepcopy(optimizer.state_dict())
        for group in old["param_groups"]:
            for flag in info.not_og_supported_flags:
                group.pop(flag, None)
        optimizer.load_state_dict(old)
        train_steps(optimizer, model, 1)


@pytest.mark.parametrize("named0", [True, False])
@pytest.mark.parametrize("named1", [True, False])
def test_can_load_from_to_named_state_dict(info, named0, named1):
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        model = conv_model()
        optimizer = info.optim_cls(model.named_parameters() if named0 else model.parameters(), **inp.kwargs)
        train_steps(optimizer, model)
        optimizer2 = info.optim_cls(model.named_parameters() if named1 else model.parameters(), **inp.kwargs)
        optimizer2.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        train_steps(optimizer2, model, 1)
        if named0 or named1:
            assert optimizer2.state_dict()["param_groups"][0]["param_names"] == [
                "0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("is_named", [True, False])
def test_save_load_equality_with_weights_only(info, is_named):
    w = Parameter(torch.randn(2, 3))
    b = Parameter(torch.randn(2))
    x = torch.randn(3)
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        optimizer = info.optim_cls(named([w, b], is_named), **inp.kwargs)
        closure = quadratic(optimizer, w, b, x)
        for _ in range(3):
            optimizer.step(closure)
        state_dict = optimizer.state_dict()
        with tempfile.TemporaryFile() as f:
            torch.save(state_dict, f)
            f.seek(0)
            assert_same(torch.load(f, weights_only=True), state_dict)


def stepped_optimizers(info):
    """Each of torch's option sets (but ``differentiable``) on two parameters, after 3 steps."""
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    for inp in _all_inputs(DEVICE, torch.float32, info, skip=("differentiable",)):
        optimizer = info.optim_cls(params, **inp.kwargs)
        for _ in range(3):
            optimizer.step()
        yield optimizer


def test_load_nontensor_step(info):
    for optimizer in stepped_optimizers(info):
        state_dict = copy.deepcopy(optimizer.state_dict())
        for state in state_dict["state"].values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].item()
        optimizer.load_state_dict(state_dict)
        optimizer.step()


# ------------------------------------------------------------------ hooks and deepcopy
def one_param_optimizers(info):
    for inp in _all_inputs(DEVICE, torch.float32, info):
        yield info.optim_cls([torch.rand(2, 3, requires_grad=True)], **inp.kwargs)


def test_state_dict_hooks(info):
    def pre(opt):
        opt.state["test"] = 1

    def post(opt, state_dict):
        state_dict["ran_pre"] = state_dict["state"].pop("test", None) == 1
        return state_dict

    for optimizer in one_param_optimizers(info):
        optimizer.register_state_dict_pre_hook(pre)
        assert optimizer.state_dict()["state"]["test"] == 1
        optimizer.register_state_dict_post_hook(post)
        state_dict = optimizer.state_dict()
        assert "test" not in state_dict["state"] and state_dict["ran_pre"]


def test_load_state_dict_hooks(info):
    def pre1(opt, state_dict):
        state_dict["param_groups"][0]["lr"] = 0.002

    def pre2(opt, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["param_groups"][0]["lr"] = 0.003
        return state_dict

    def post(opt):
        opt.state["ran_post"] = True

    for optimizer in one_param_optimizers(info):
        state_dict = optimizer.state_dict()
        optimizer.register_load_state_dict_pre_hook(pre1)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002
        optimizer.register_load_state_dict_pre_hook(pre2, prepend=True)
        optimizer.register_load_state_dict_post_hook(post)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002 and optimizer.state["ran_post"]


def test_step_hooks(info):
    params = [torch.tensor([1.0, 1.0])]
    for inp in _all_inputs(DEVICE, torch.float32, info):
        optimizer = info.optim_cls(params, **inp.kwargs)
        other = torch.optim.SGD(params)
        calls = []
        handles = [register_optimizer_step_pre_hook(lambda *a: calls.append(0)),
                   register_optimizer_step_post_hook(lambda *a: calls.append(5)),
                   optimizer.register_step_pre_hook(lambda *a: calls.append(1)),
                   optimizer.register_step_post_hook(lambda *a: calls.append(2)),
                   other.register_step_pre_hook(lambda *a: calls.append(1)),
                   other.register_step_post_hook(lambda *a: calls.append(2))]
        try:
            optimizer.step()
            other.step()
            optimizer.step()
        finally:
            for h in handles:
                h.remove()
        optimizer.step()
        assert calls == [0, 1, 2, 5] * 3


def test_deepcopy_copies_all_public_attrs(info):
    for optimizer in stepped_optimizers(info):
        public = {k for k in optimizer.__dict__ if not k.startswith("_")}
        assert public == {k for k in copy.deepcopy(optimizer).__dict__ if not k.startswith("_")}


def test_constructor_takes_torchs_signature(impl):
    """Every keyword torch's twin takes, the zoo's class takes by the same name."""
    for name in TWINS:
        torch_cls = getattr(torch.optim, name)
        cls = torch_cls if impl == "torch" else ZOO[name]
        missing = set(inspect.signature(torch_cls).parameters) - set(inspect.signature(cls).parameters)
        assert not missing, (name, missing)


# ------------------------------------------------------------------ differentiable=True
@pytest.mark.parametrize("name", TWINS)
def test_differentiable_step_has_torchs_gradient(name):
    """``differentiable=True``: after two steps, autograd through the third, w.r.t. the parameter
    and the gradient it starts from, equals the gradient through torch's differentiable twin.
    (torch's differentiable path computes bias corrections from the float32 ``step`` tensor, the
    zoo in float64: they agree to float32 precision, rtol 1e-5.)"""
    (entry,) = [i for i in common_optimizers.optim_db if i.optim_cls.__name__ == name]
    weights = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
    for inp in entry.optim_inputs_func(device=DEVICE):
        if isinstance(inp.kwargs.get("lr"), torch.Tensor):
            continue
        results = []
        for cls in (entry.optim_cls, ZOO[name]):
            torch.manual_seed(0)
            x0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
            p = x0.detach().clone()
            optimizer = cls([p], **inp.kwargs, differentiable=True)
            for _ in range(2):
                p.grad = torch.randn(4, 3, dtype=torch.float64)
                optimizer.step()
            tracked = x0 + (p.detach() - x0.detach())  # p's value, a function of x0 for autograd
            optimizer.param_groups[0]["params"][0] = tracked
            if p in optimizer.state:
                optimizer.state[tracked] = optimizer.state.pop(p)
            tracked.grad = g = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
            optimizer.step()
            results.append(torch.autograd.grad((tracked * weights).sum(), [x0, g], allow_unused=True))
        for a, b in zip(*results):
            assert (a is None) == (b is None), inp.desc
            if a is not None:
                assert_same(a, b, rtol=1e-5, atol=1e-12)
