"""Drop-in parity with torch.optim on a real training loop (an MLP on scikit-learn's digits)."""

import copy
import inspect

import pytest
import torch
from sklearn.datasets import load_digits

import torchopt_zoo as zoo

PAIRS = [
    (zoo.Adam, torch.optim.Adam, {}),
    (zoo.Adam, torch.optim.Adam, {"amsgrad": True, "weight_decay": 1e-2}),
    (zoo.Adam, torch.optim.Adam, {"maximize": True, "lr": 1e-4}),
    (zoo.Adam, torch.optim.Adam, {"decoupled_weight_decay": True, "weight_decay": 0.1}),
    (zoo.AdamW, torch.optim.AdamW, {"amsgrad": True}),
    (zoo.Adagrad, torch.optim.Adagrad, {"lr_decay": 1e-3, "weight_decay": 1e-3,
                                        "initial_accumulator_value": 0.1}),
    (zoo.Adagrad, torch.optim.Adagrad, {"maximize": True, "lr": 1e-3}),
    (zoo.RMSprop, torch.optim.RMSprop, {"lr": 1e-3}),
    (zoo.RMSprop, torch.optim.RMSprop, {"lr": 1e-3, "momentum": 0.9, "centered": True,
                                        "weight_decay": 1e-3}),
    (zoo.GD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (zoo.NAdam, torch.optim.NAdam, {"weight_decay": 1e-3, "momentum_decay": 6e-3}),
    (zoo.NAdam, torch.optim.NAdam, {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    (zoo.RAdam, torch.optim.RAdam, {"weight_decay": 1e-3}),
    (zoo.RAdam, torch.optim.RAdam, {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True,
                                    "lr": 1e-4}),
    (zoo.Adamax, torch.optim.Adamax, {"weight_decay": 1e-3}),
    (zoo.Adadelta, torch.optim.Adadelta, {"rho": 0.95, "weight_decay": 1e-3}),
]
TORCH_FUSED = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.SGD)


def pair_id(p):
    return p[0].__name__ + "".join(f"-{k}={v}" for k, v in p[2].items())


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def groups(model, lr_scale=1.0):
    """Two param groups with their own lr: weights and biases."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, "lr": 3e-3 * lr_scale}]


def train(model, opt, data, steps, start=0, scheduler=None):
    X, y = data
    losses = []
    for i in range(start, start + steps):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(y)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def assert_same_params(a, b, **tol):
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, **tol)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
@pytest.mark.parametrize("foreach", [False, True, None])
def test_trajectory_matches_torch_for_200_steps(pair, foreach, digits):
    # foreach=None: the zoo's default (fused) tier against torch's fused optimizer where torch has one
    zcls, tcls, kw = pair
    mz, mt = make_model(), make_model()
    oz = zcls(groups(mz), foreach=foreach, **kw)
    fused = foreach is None and tcls in TORCH_FUSED
    ot = tcls(groups(mt), fused=True, **kw) if fused else tcls(groups(mt), foreach=bool(foreach), **kw)
    lz, lt = train(mz, oz, digits, 200), train(mt, ot, digits, 200)
    assert_same_params(mz, mt)
    torch.testing.assert_close(torch.tensor(lz), torch.tensor(lt))
    if not kw.get("maximize"):
        assert lz[-1] < lz[0]


@pytest.mark.parametrize("pair", [p for p in PAIRS if p[1] is not torch.optim.SGD], ids=pair_id)
@pytest.mark.parametrize("direction", ["torch_to_zoo", "zoo_to_torch"])
def test_state_dict_interchange_continues_identically(pair, direction, digits):
    zcls, tcls, kw = pair
    first, second = (tcls, zcls) if direction == "torch_to_zoo" else (zcls, tcls)
    m1 = make_model()
    o1 = first(groups(m1), **kw)
    train(m1, o1, digits, 50)
    saved_model, saved_opt = copy.deepcopy(m1.state_dict()), copy.deepcopy(o1.state_dict())

    m2 = make_model(seed=1)
    m2.load_state_dict(saved_model)
    o2 = second(groups(m2), **kw)
    o2.load_state_dict(copy.deepcopy(saved_opt))  # torch's load keeps the loaded tensors
    m3 = make_model(seed=2)
    m3.load_state_dict(saved_model)
    o3 = first(groups(m3), **kw)
    o3.load_state_dict(copy.deepcopy(saved_opt))

    train(m2, o2, digits, 50, start=50)
    train(m3, o3, digits, 50, start=50)
    assert_same_params(m2, m3)
    for state in o2.state.values():
        assert state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
        assert float(state["step"]) == 100.0


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 7, 0.5),
    "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [5, 20], 0.3),
    "ConstantLR": lambda o: torch.optim.lr_scheduler.ConstantLR(o, 0.5, total_iters=10),
    "LinearLR": lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=10),
    "ExponentialLR": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.97),
    "PolynomialLR": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, 30, 2.0),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 30),
    "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 8),
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 1e-4, 1e-2, step_size_up=5),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 1e-2, total_steps=40),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)),
    "MultiplicativeLR": lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda t: 0.95),
    "SequentialLR": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=5),
            torch.optim.lr_scheduler.ExponentialLR(o, 0.9)], milestones=[5]),
    "ChainedScheduler": lambda o: torch.optim.lr_scheduler.ChainedScheduler(
        [torch.optim.lr_scheduler.ConstantLR(o, 0.5, total_iters=5),
         torch.optim.lr_scheduler.ExponentialLR(o, 0.9)]),
}


def test_every_torch_scheduler_is_covered():
    known = {name for name, obj in inspect.getmembers(torch.optim.lr_scheduler, inspect.isclass)
             if issubclass(obj, torch.optim.lr_scheduler.LRScheduler)
             and obj.__module__ == "torch.optim.lr_scheduler"
             and name not in ("LRScheduler", "_LRScheduler", "SWALR")}
    assert known - set(SCHEDULERS) <= {"ReduceLROnPlateau"}, known - set(SCHEDULERS)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_drive_zoo_like_torch(name, digits):
    # the learning rates the scheduler sets are torch's exactly; the zoo's default tier (its C
    # kernel on CPU) rounds its arithmetic as torch's fused kernel does up to the last bits
    mz, mt = make_model(), make_model()
    oz, ot = zoo.Adam(groups(mz)), torch.optim.Adam(groups(mt), fused=True)
    lz = train(mz, oz, digits, 30, scheduler=SCHEDULERS[name](oz))
    lt = train(mt, ot, digits, 30, scheduler=SCHEDULERS[name](ot))
    torch.testing.assert_close(torch.tensor(lz), torch.tensor(lt), rtol=1e-5, atol=0)
    assert [g["lr"] for g in oz.param_groups] == [g["lr"] for g in ot.param_groups]


def test_reduce_lr_on_plateau(digits):
    mz = make_model()
    oz = zoo.Adam(mz.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(oz, patience=0, factor=0.5)
    for _ in range(3):
        sched.step(1.0)  # no improvement: lr halves after patience
    assert oz.param_groups[0]["lr"] < 1e-2


def test_tensor_lr_matches_float_lr(digits):
    ma, mb = make_model(), make_model()
    lr = torch.tensor(1e-3)
    oa = zoo.Adam(ma.parameters(), lr=lr)
    ob = zoo.Adam(mb.parameters(), lr=lr.item())
    train(ma, oa, digits, 20), train(mb, ob, digits, 20)
    assert_same_params(ma, mb, rtol=0, atol=0)


def test_complex_parameters_match_torch():
    torch.manual_seed(0)
    w0 = torch.randn(4, 3, dtype=torch.complex64)
    target = torch.randn(4, 3, dtype=torch.complex64)
    for zcls, tcls in [(zoo.Adam, torch.optim.Adam), (zoo.RMSprop, torch.optim.RMSprop),
                       (zoo.Adagrad, torch.optim.Adagrad), (zoo.NAdam, torch.optim.NAdam),
                       (zoo.RAdam, torch.optim.RAdam), (zoo.Adamax, torch.optim.Adamax),
                       (zoo.Adadelta, torch.optim.Adadelta)]:
        for foreach in (False, True):
            a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
            oa, ob = zcls([a], foreach=foreach), tcls([b], foreach=foreach)
            for _ in range(30):
                for x, o in ((a, oa), (b, ob)):
                    o.zero_grad()
                    ((x - target).abs() ** 2).sum().backward()
                    o.step()
            torch.testing.assert_close(a, b)


def test_step_returns_closure_loss_and_hooks_fire(digits):
    model = make_model()
    opt = zoo.Adam(model.parameters())
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    X, y = digits

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X[:32]), y[:32])
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "sd_pre", "sd_post", "load_pre", "load_post"]


def test_add_param_group_and_zero_grad(digits):
    model = make_model()
    opt = zoo.RMSprop(list(model[0].parameters()), lr=1e-3)
    opt.add_param_group({"params": list(model[2].parameters()), "lr": 1e-2, "momentum": 0.5})
    assert opt.param_groups[1]["momentum"] == 0.5 and opt.param_groups[1]["alpha"] == 0.99
    train(model, opt, digits, 3)
    assert "momentum_buffer" in opt.state[model[2].weight]
    assert "momentum_buffer" not in opt.state[model[0].weight]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_torch_compile_training_step_matches_eager(digits):
    X, y = digits
    results = []
    for compiled in (False, True):
        model = make_model()
        opt = zoo.Adam(model.parameters(), lr=1e-2)

        def train_step(xb, yb):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            return loss

        fn = torch.compile(train_step, backend="aot_eager") if compiled else train_step
        for i in range(5):
            fn(X[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32])
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_fused_state_survives_save_load_and_grad_subsets(digits, tmp_path):
    # The fused tier keeps parameters and state in flat buffers (views per parameter): a torch.save
    # round trip, a step where one parameter has no gradient, and a load back must all behave as
    # torch.optim's fused Adam (the kernel the zoo runs on CPU).
    mz, mt = make_model(), make_model()
    oz, ot = zoo.Adam(groups(mz)), torch.optim.Adam(groups(mt), fused=True)
    train(mz, oz, digits, 10), train(mt, ot, digits, 10)
    torch.save(oz.state_dict(), tmp_path / "zoo.pt")
    ot2 = torch.optim.Adam(groups(mt), fused=True)
    ot2.load_state_dict(torch.load(tmp_path / "zoo.pt"))
    for model, opt in ((mz, oz), (mt, ot2)):
        model[0].bias.requires_grad_(False)
        train(model, opt, digits, 3, start=10)
        model[0].bias.requires_grad_(True)
        train(model, opt, digits, 5, start=13)
    assert_same_params(mz, mt)  # the step without a full set of gradients runs the list tier


def test_state_dict_round_trip_adds_no_group_keys(digits, tmp_path):
    mz = make_model()
    oz = zoo.Adam(groups(mz))
    train(mz, oz, digits, 3)
    before = oz.state_dict()
    torch.save(before, tmp_path / "opt.pt")
    again = zoo.Adam(groups(make_model()))
    again.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    after = again.state_dict()
    assert [sorted(g) for g in after["param_groups"]] == [sorted(g) for g in before["param_groups"]]


def test_an_older_state_dict_with_float_steps_loads_and_continues(digits):
    m1, m2 = make_model(), make_model()
    o1 = zoo.Adam(groups(m1))
    train(m1, o1, digits, 5)
    saved = copy.deepcopy(o1.state_dict())
    m2.load_state_dict(m1.state_dict())
    for state in saved["state"].values():
        state["step"] = float(state["step"])  # as torch.optim kept it before 1.12
    o2 = zoo.Adam(groups(m2))
    o2.load_state_dict(saved)
    train(m1, o1, digits, 5, start=5)
    train(m2, o2, digits, 5, start=5)
    assert_same_params(m1, m2)


def test_sgd_momentum_state_continues_in_gd(digits):
    """torch's SGD keeps no step: its momentum buffer loaded into GD continues, not restarts."""
    kw = {"lr": 0.05, "momentum": 0.9}
    m_torch, m_zoo = make_model(), make_model()
    ot = torch.optim.SGD(groups(m_torch), **kw)
    train(m_torch, ot, digits, 10)
    m_zoo.load_state_dict(m_torch.state_dict())
    oz = zoo.GD(groups(m_zoo), **kw)
    oz.load_state_dict(copy.deepcopy(ot.state_dict()))
    train(m_torch, ot, digits, 10, start=10)
    train(m_zoo, oz, digits, 10, start=10)
    assert_same_params(m_torch, m_zoo)


def test_complex_adagrad_with_an_initial_accumulator_matches_torch():
    torch.manual_seed(0)
    w0, target = torch.randn(4, 3, dtype=torch.complex64), torch.randn(4, 3, dtype=torch.complex64)
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    oa = zoo.Adagrad([a], lr=0.1, initial_accumulator_value=0.3)
    ob = torch.optim.Adagrad([b], lr=0.1, initial_accumulator_value=0.3)
    for _ in range(20):
        for x, o in ((a, oa), (b, ob)):
            o.zero_grad()
            ((x - target).abs() ** 2).sum().backward()
            o.step()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(oa.state[a]["sum"], ob.state[b]["sum"])
