"""``torch.compile`` of the step for every rule, and the on-device step it takes.

Under ``torch.compile`` (and with ``capturable=True``) the multi-tensor step keeps the step counts,
the bias corrections and ``lr`` as tensors: no host read, so no graph break and no recompile per
step. The state is made by ``_init_group``, which dynamo runs eagerly while tracing, so the first
step does not recompile either. Checked here against the eager float step (the reference math).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import torchopt_zoo as zoo


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def backward(model, x, frozen_until=0, step=0):
    """Gradients of a fixed loss; the last layer gets none before ``frozen_until``, so its step
    count lags the others'."""
    model.zero_grad()
    model(x).square().mean().backward()
    if step < frozen_until:
        for p in model[2].parameters():
            p.grad = None


def test_on_device_step_matches_the_float_step(config):
    """``capturable=True`` (eager, CPU) takes the tensor-step path; it agrees with the float step,
    with step counts that differ between parameters. Not bitwise: there the bias corrections are
    ``1 - beta ** step`` in float32, from the float32 ``step``, as in torch's capturable step
    (``1 - 0.999**1`` is 1.3e-5 off in float32, so the early steps differ by that much; an
    off-by-one step would differ by 1/step)."""
    cls, kw = config
    x = torch.randn(16, 6, dtype=torch.float64)
    runs = []
    for capturable in (False, True):
        model = mlp(torch.float64)
        opt = cls(model.parameters(), foreach=True, capturable=capturable, **kw)
        for step in range(12):
            backward(model, x, frozen_until=3, step=step)
            opt.step()
        runs.append(list(model.parameters()))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # 12 steps move them about 1e-2


def compiled_counts(fn, steps):
    torch._dynamo.reset()
    counters.clear()
    for step in range(steps):
        fn(step)
    return sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("cls", zoo.OPTIMIZERS, ids=lambda c: c.__name__)
def test_compiled_step_has_no_graph_break_and_no_recompile(cls):
    """``torch.compile`` of ``opt.step()`` as torch documents it: one graph for 12 steps (the first
    one included), no graph break, and the eager trajectory."""
    x = torch.randn(16, 6)
    results = []
    for compiled in (False, True):
        model = mlp()
        opt = cls(model.parameters(), lr=1e-2)
        step_fn = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step

        def train(step):
            backward(model, x)
            step_fn()

        breaks, graphs = compiled_counts(train, 12)
        if compiled:
            assert (breaks, graphs) == (0, 1)
        results.append(list(model.parameters()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_training_step_has_no_more_graphs_than_with_torch_adam():
    """``torch.compile`` of forward, backward and ``opt.step()`` together."""
    x = torch.randn(16, 6)
    graphs = {}
    for cls in (torch.optim.Adam, zoo.Adam):
        model = mlp()
        opt = cls(model.parameters(), lr=1e-2)

        @torch.compile(backend="aot_eager")
        def train(step):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()

        graphs[cls] = compiled_counts(train, 6)[1]
    assert graphs[zoo.Adam] <= graphs[torch.optim.Adam]
