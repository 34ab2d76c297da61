"""The fused tier (flat buffers, torch's fused kernel on CPU, Triton kernels) against the reference.

The Triton kernels run here on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``,
set by conftest.py when no GPU is present; ``TORCHOPT_ZOO_TRITON=1`` sends CPU buckets to them).
"""

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import CONFIGS, config_id

import torchopt_zoo as zoo
from torchopt_zoo.core.state import state_dtype

pytest.importorskip("triton")

shapes = st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6)
layouts = st.integers(1, 3)  # number of param groups the tensors are dealt into


def make_groups(tensors, n_groups):
    groups = [{"params": tensors[i::n_groups], "lr": 0.01 * (i + 1)} for i in range(n_groups)]
    return [g for g in groups if g["params"]]


def run(cfg, init, grads, n_groups, *, bind=False, **tier):
    """Parameters and optimizer after ``len(grads)`` steps. ``bind``: gradients arrive as autograd
    delivers them after ``zero_grad(set_to_none=False)``, accumulated into the existing ``p.grad``.
    A parameter whose gradients are None is frozen (``requires_grad=False``)."""
    cls, kw = cfg
    params = [t.clone().requires_grad_(g is not None) for t, g in zip(init, grads[0])]
    opt = cls(make_groups(params, n_groups), **tier, **kw)
    for step_grads in grads:
        if bind:
            opt.zero_grad(set_to_none=False)
        for p, g in zip(params, step_grads):
            if g is None:
                continue
            if bind and p.grad is not None:
                p.grad.add_(g)
            else:
                p.grad = g.clone()
        opt.step()
    return params, opt


def assert_same_run(a, b, tol):
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb):
        torch.testing.assert_close(y.detach(), x.detach(), **tol)
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key in sa[i]:
            torch.testing.assert_close(sb[i][key], sa[i][key], **tol)


def draw(data, dtype):
    """Initial values and per-step gradients (None for a frozen parameter); some tensors take a
    second dtype (``float32``, or ``bfloat16`` beside ``float32``), so groups mix dtypes."""
    shape_list, n_groups = data.draw(shapes), data.draw(layouts)
    steps, seed = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 2**31 - 1))
    other = torch.bfloat16 if dtype == torch.float32 else torch.float32
    dtypes = data.draw(st.lists(st.sampled_from([dtype, dtype, other]), min_size=len(shape_list),
                                max_size=len(shape_list)))
    frozen = data.draw(st.lists(st.booleans(), min_size=len(shape_list), max_size=len(shape_list)))
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen).to(d) for s, d in zip(shape_list, dtypes)]
    grads = [[None if f else torch.randn(s, generator=gen).to(d) for s, d, f in zip(shape_list, dtypes, frozen)]
             for _ in range(steps)]
    return init, grads, n_groups


TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def check_fused_matches_reference(cfg, data, dtype, triton):
    init, grads, n_groups = draw(data, dtype)
    bind = data.draw(st.booleans())
    ref = run(cfg, init, grads, n_groups, foreach=False)
    out = run(cfg, init, grads, n_groups, bind=bind, fused="flat")
    opt = out[1]
    for group in opt.param_groups:  # one bucket per dtype of the trainable parameters; frozen ones stay out
        dtypes = list(dict.fromkeys(p.dtype for p in group["params"] if p.requires_grad))
        fused = opt._fused.get(id(group))
        if not dtypes or (len(dtypes) > 1 and opt.rule.group_wide):
            assert fused is None
            continue
        assert [b.param.dtype for b in fused.buckets] == dtypes
        assert all(b.triton == (triton and b.param.dtype != torch.float64) for b in fused.buckets)
        assert fused.frozen == [p for p in group["params"] if not p.requires_grad]
    tol = max((TOL[t.dtype] for t in init), key=lambda d: d["rtol"])
    assert_same_run(ref, out, tol)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_fused_torch_ops_match_reference(cfg, data, dtype):
    check_fused_matches_reference(cfg, data, dtype, triton=False)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_fused_triton_kernels_match_reference(cfg, data, dtype):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHOPT_ZOO_TRITON", "1")
        check_fused_matches_reference(cfg, data, dtype, triton=True)


@pytest.fixture(params=[False, True], ids=["torch-ops", "triton"])
def backend(request, monkeypatch):
    if request.param:
        monkeypatch.setenv("TORCHOPT_ZOO_TRITON", "1")
    return request.param


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def loss_of(model, seed):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
    return (model(x) - y).square().mean()


def train(pairs, steps, set_to_none=False):
    """(model, optimizer) pairs trained side by side on the same batches."""
    for i in steps:
        for m, o in pairs:
            o.zero_grad(set_to_none=set_to_none)
            loss_of(m, i).backward()
            o.step()


def test_gradients_land_in_the_flat_buffer_and_the_step_takes_the_fast_path(backend, monkeypatch):
    model, twin = mlp(), mlp()
    opt, ref = zoo.Adam(model.parameters(), lr=0.01, fused="flat"), zoo.Adam(twin.parameters(), lr=0.01, foreach=False)
    slow_steps = []
    original = opt._fused_group
    monkeypatch.setattr(opt, "_fused_group", lambda *a: slow_steps.append(1) or original(*a))
    train([(model, opt), (twin, ref)], range(6))
    ((bucket,),) = [f.buckets for f in opt._fused.values()]
    assert bucket.triton == backend
    assert len(slow_steps) == 1  # the first step makes the bucket; zero_grad then binds the gradients
    base, size = bucket.grad.data_ptr(), bucket.grad.element_size()
    assert [p.grad.data_ptr() for p in model.parameters()] == [base + o * size for o in bucket.offsets]
    assert [p.data_ptr() for p in model.parameters()] == [bucket.param.data_ptr() + o * size
                                                          for o in bucket.offsets]
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", ["assign", "set_to_none", "module_zero_grad_keeping_refs", "no_backward"])
def test_a_gradient_that_bypasses_the_buffer_is_used(change, backend):
    # After the gradients were bound to the flat buffer, the user replaces them in each way a
    # training loop can; the step must use the gradients p.grad holds now.
    model, twin = mlp(), mlp()
    opt, ref = zoo.Adam(model.parameters(), lr=0.01, fused="flat"), zoo.Adam(twin.parameters(), lr=0.01, foreach=False)
    kept = []
    for i in range(4):
        for m, o in ((model, opt), (twin, ref)):
            if i < 3 or change == "assign":
                o.zero_grad(set_to_none=False)
            elif change == "set_to_none":
                o.zero_grad()
            elif change == "module_zero_grad_keeping_refs":
                kept = [p.grad for p in m.parameters()]
                m.zero_grad()
            if i < 3 or change != "no_backward":
                loss_of(m, i).backward()
            if i == 3 and change == "assign":
                for p in m.parameters():
                    p.grad = p.grad * 2.0
            o.step()
    del kept  # (held across the step on purpose)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_step_never_writes_the_gradients(config, backend):
    cls, kw = config
    model = mlp()
    opt = cls(model.parameters(), lr=0.01, fused="flat", **kw)
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(0.0)
    for i in range(3):
        opt.zero_grad(set_to_none=False)
        loss_of(model, i).backward()
        before = [p.grad.clone() for p in model.parameters()]
        opt.step()
        for p, g in zip(model.parameters(), before):
            assert torch.equal(p.grad, g)
    assert opt._fused


def test_amp_grad_scale_and_found_inf(config, backend):
    # The grad_scale / found_inf protocol of torch's fused optimizers: a scaled gradient is
    # unscaled in the kernel; a step with found_inf set changes nothing, step counts included.
    cls, kw = config
    scaled, plain = mlp(), mlp()
    o_scaled, o_plain = cls(scaled.parameters(), lr=0.01, fused="flat", **kw), cls(plain.parameters(), lr=0.01, fused="flat", **kw)
    for i in range(4):
        for m, o, scale in ((scaled, o_scaled, 1024.0), (plain, o_plain, 1.0)):
            o.zero_grad(set_to_none=False)
            (loss_of(m, i) * scale).backward()
            o.grad_scale, o.found_inf = torch.tensor(scale), torch.tensor(0.0)
            if i == 2:  # an overflow step
                o.found_inf = torch.tensor(1.0)
                state = copy.deepcopy(o.state_dict()["state"])
                params = [p.detach().clone() for p in m.parameters()]
            o.step()
            if i == 2:
                assert all(torch.equal(a, b) for a, b in zip(m.parameters(), params))
                after = o.state_dict()["state"]
                assert all(torch.equal(after[k][key], v) for k in state for key, v in state[k].items())
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(float(s["step"]) == 3 for s in o_scaled.state.values() if "step" in s)


def test_grad_scaler_drives_the_fused_tier_like_torch_fused_adam():
    zm, tm = mlp(), mlp()
    oz, ot = zoo.Adam(zm.parameters(), lr=0.01, fused="flat"), torch.optim.Adam(tm.parameters(), lr=0.01, fused=True)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10), torch.amp.GradScaler("cpu", init_scale=2.0**10)]
    for i in range(5):
        for m, o, s in ((zm, oz, scalers[0]), (tm, ot, scalers[1])):
            o.zero_grad()
            loss = loss_of(m, i) * (float("inf") if i == 2 else 1.0)  # one overflow
            s.scale(loss).backward()
            s.step(o)
            s.update()
    assert scalers[0].get_scale() == scalers[1].get_scale() < 2.0**10
    for a, b in zip(zm.parameters(), tm.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_low_precision_parameters_keep_float32_state(backend):
    model = mlp().to(torch.bfloat16)
    opt = zoo.Adam(model.parameters(), lr=0.01, fused="flat")
    for i in range(3):
        opt.zero_grad(set_to_none=False)
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)
        model(x).float().square().mean().backward()
        opt.step()
    ((bucket,),) = [f.buckets for f in opt._fused.values()]
    assert bucket.param.dtype == torch.bfloat16 and bucket.flats["exp_avg"].dtype == torch.float32
    state = opt.state_dict()["state"][0]
    assert state["exp_avg"].dtype == torch.float32
    torch_opt = torch.optim.Adam(mlp().to(torch.bfloat16).parameters())
    torch_opt.load_state_dict(opt.state_dict())  # torch takes it (casting to its own policy)
    back = zoo.Adam(model.parameters(), foreach=False)
    back.load_state_dict(torch_opt.state_dict())
    assert back.state_dict()["state"][0]["exp_avg"].dtype == torch.float32


def test_parameters_sharing_storage_are_not_moved():
    base = torch.randn(10)
    shared = torch.nn.Parameter(base[:5])  # a view: moving it would detach it from base
    kept = torch.randn(4)
    aliased = torch.nn.Parameter(kept)  # shares storage with a tensor the user still holds
    own = torch.nn.Parameter(torch.randn(3))
    for params in ([shared, own], [aliased, own]):
        opt = zoo.Adam(params, lr=0.1)  # the default tier moves nothing
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        assert not opt._fused
        with pytest.warns(UserWarning, match="fused=.flat.: .*shares its storage"):
            flat = zoo.Adam(params, lr=0.1, fused="flat")
            flat.step()
        assert not flat._fused
    assert torch.equal(base[:5], shared.detach()) and torch.equal(kept, aliased.detach())


def test_moved_parameters_keep_working_in_their_module_and_after_load_state_dict(backend):
    model, twin = mlp(), mlp()
    opt, ref = zoo.AdamW(model.parameters(), lr=0.01, fused="flat"), zoo.AdamW(twin.parameters(), lr=0.01, foreach=False)
    train([(model, opt), (twin, ref)], range(3), set_to_none=True)
    saved = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(saved)  # the parameters stay in the old flat buffer: adopted, not copied
    flat_before = next(iter(model.parameters())).data_ptr()
    train([(model, opt), (twin, ref)], range(3, 6), set_to_none=True)
    assert next(iter(model.parameters())).data_ptr() == flat_before and opt._fused
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model.load_state_dict(twin.state_dict())  # in-place copies into the views
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_line_search_runs_over_a_fused_group():
    model = mlp()
    opt = zoo.Adam(model.parameters(), lr=0.01, fused="flat")
    for i in range(2):
        opt.zero_grad(set_to_none=False)
        loss_of(model, i).backward()
        opt.step()
    searched = zoo.GD(model.parameters(), lr=1.0, line_search=zoo.stepsize.Backtracking())
    f0 = loss_of(model, 0).item()

    def closure():
        searched.zero_grad()
        loss = loss_of(model, 0)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    for _ in range(5):
        searched.step(closure)
    assert loss_of(model, 0).item() < f0


class MixedNet(torch.nn.Module):
    """A bf16 layer, a float32 layer and a frozen float32 layer: one param group, two dtypes."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.low = torch.nn.Linear(6, 5).to(torch.bfloat16)
        self.high = torch.nn.Linear(5, 4)
        self.frozen = torch.nn.Linear(4, 3).requires_grad_(False)

    def forward(self, x):
        return self.frozen(self.high(torch.tanh(self.low(x.to(torch.bfloat16)).float())))


def assert_close_models(a, b, dtype=torch.float32):
    """Parameters as close as ``dtype`` arithmetic in the forward pass allows."""
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x.float(), y.float(), **TOL[dtype])


def test_a_group_mixing_dtypes_with_frozen_parameters_takes_the_fast_path(config, backend, monkeypatch):
    cls, kw = config
    model, twin = MixedNet(), MixedNet()
    opt, ref = cls(model.parameters(), lr=0.01, fused="flat", **kw), cls(twin.parameters(), lr=0.01, foreach=False, **kw)
    slow_steps = []
    original = opt._fused_group
    monkeypatch.setattr(opt, "_fused_group", lambda *a: slow_steps.append(1) or original(*a))
    train([(model, opt), (twin, ref)], range(5))
    assert_close_models(model, twin, torch.bfloat16)
    if opt.rule.group_wide:  # AdaGrad-Norm's norm spans the group: one dtype per fused group
        assert not opt._fused
        return
    (fused,) = opt._fused.values()
    assert [b.param.dtype for b in fused.buckets] == [torch.bfloat16, torch.float32]
    assert fused.frozen == list(model.frozen.parameters())
    assert len(slow_steps) == 1  # built once; afterwards every step is the fast path


def test_freezing_a_parameter_rebuilds_the_buckets_and_moves_no_foreign_tensor(backend):
    model, twin = mlp(), mlp()
    opt, ref = zoo.Adam(model.parameters(), lr=0.01, fused="flat"), zoo.Adam(twin.parameters(), lr=0.01, foreach=False)
    train([(model, opt), (twin, ref)], range(3))
    for m in (model, twin):  # freeze the first layer
        for p in m[0].parameters():
            p.requires_grad_(False)
            p.grad = None
    train([(model, opt), (twin, ref)], range(3, 6))
    (fused,) = opt._fused.values()
    assert fused.frozen == list(model[0].parameters()) and len(fused.buckets[0].members) == 2
    assert_close_models(model, twin)
    for m in (model, twin):  # a frozen parameter given a gradient is stepped (fast path or not)
        m[0].weight.grad = torch.ones_like(m[0].weight)
    opt.step()
    ref.step()
    assert_close_models(model, twin)


def test_a_tensor_lr_is_read_on_the_device_and_follows_its_scheduler(config, backend, monkeypatch):
    # Triton buckets take a tensor lr on their device as a pointer: the step never reads it on the
    # host (on CUDA that would be a sync per step), and a scheduler's in-place update of it
    # (torch's LRScheduler fills a tensor lr) reaches the kernel. Same trajectory as a float lr.
    cls, kw = config
    model, twin = mlp(), mlp()
    lr0 = 2.0**-6  # exact in float32, so the two runs see the same lr
    opt, ref = cls(model.parameters(), lr=torch.tensor(lr0), fused="flat", **kw), cls(twin.parameters(), lr=lr0, fused="flat", **kw)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (opt, ref)]
    if backend:
        from torchopt_zoo.core import optimizer as base
        from torchopt_zoo.tiers import triton as triton_rules

        def no_host_read(name, value):
            assert not isinstance(value, torch.Tensor), "the step read a tensor lr on the host"
            return float(value)
        monkeypatch.setattr(base, "as_float", no_host_read)
        monkeypatch.setattr(triton_rules, "as_float", no_host_read)
    for i in range(6):
        train([(model, opt), (twin, ref)], [i])
        for s in scheds:
            s.step()
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and float(opt.param_groups[0]["lr"]) == lr0 / 8
    assert opt._fused
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_fused_arguments_are_checked():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        zoo.Adam(p, fused=True, foreach=True)
    with pytest.raises(ValueError, match="Invalid fused"):
        zoo.RMSprop(p, fused="yes")
    opt = zoo.Adam(p, fused=False)
    p[0].grad = torch.ones(3)
    opt.step()
    assert not opt._fused


def test_state_dtype_policy():
    assert state_dtype(torch.zeros(1, dtype=torch.float16)) == torch.float32
    assert state_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64
