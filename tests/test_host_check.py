"""The address tables' steady-state check (``AddressTable.holds``): the compiled check of
``tiers/host.py`` and its Python reference give the same answer, the one each case calls for, and
load the same gradient addresses."""

import pytest
import torch

import torchopt_zoo as zoo
from torchopt_zoo.tiers import cpu, host

if host.checker(wait=True) is None:
    pytest.skip("the compiled steady-state check cannot be built here (no C compiler or Python.h)",
                allow_module_level=True)
if not cpu.enabled():
    pytest.skip("the CPU kernels (whose tables these are) are off here", allow_module_level=True)


def new_gradients(params):
    for p in params:
        p.grad = torch.randn_like(p)


def restride_gradient(params):  # the same address, another layout: a transposed view
    params[1].grad = params[1].grad.t()


# (name, change made after a step, whether the table still holds the group)
CASES = [
    ("nothing", lambda params, opt: None, True),
    ("new gradients", lambda params, opt: new_gradients(params), True),
    ("a gradient set to None", lambda params, opt: setattr(params[0], "grad", None), False),
    ("a sparse gradient", lambda params, opt: setattr(params[2], "grad", torch.randn(5).to_sparse()), False),
    ("a non-contiguous gradient at the same address", lambda params, opt: restride_gradient(params), False),
    ("a non-contiguous new gradient", lambda params, opt: setattr(params[1], "grad", torch.randn(2, 4)[:, ::2]), False),
    ("a gradient of another dtype", lambda params, opt: setattr(params[0].grad, "data", torch.zeros(3, dtype=torch.float64)), False),
    ("a rebound parameter", lambda params, opt: setattr(params[1], "data", params[1].data.clone()), False),
    ("a replaced state tensor", lambda params, opt: opt.state[params[2]].__setitem__("exp_avg", opt.state[params[2]]["exp_avg"].clone()), False),
    ("a replaced step", lambda params, opt: opt.state[params[0]].__setitem__("step", opt.state[params[0]]["step"].clone()), False),
    ("a state key gone", lambda params, opt: opt.state[params[1]].pop("exp_avg_sq"), False),
]


def stepped_table(fillers=0):
    """A stepped table over ``fillers`` parameters and then the three the cases change (with 40
    fillers, the compiled check prefetches the changed ones' objects before it reaches them)."""
    torch.manual_seed(0)
    params = [torch.randn(4, requires_grad=True) for _ in range(fillers)]
    params += [torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True), torch.randn(5, requires_grad=True)]
    opt = zoo.Adam(params)
    new_gradients(params)
    opt.step()
    (table,) = opt._group_tables.values()
    return params, opt, table


@pytest.mark.parametrize("fillers", [0, 40])
@pytest.mark.parametrize("name, perturb, held", CASES, ids=[c[0] for c in CASES])
def test_compiled_and_python_checks_agree(name, perturb, held, fillers, monkeypatch):
    answers, loaded = {}, {}
    for check in ("compiled", "python"):
        monkeypatch.setenv("TORCHOPT_ZOO_HOST_CHECK", "1" if check == "compiled" else "0")
        params, opt, table = stepped_table(fillers)
        assert table.holds(params, opt.state)
        perturb(params[fillers:], opt)
        answers[check] = table.holds(params, opt.state)
        loaded[check] = list(table._grad_addresses)
        if answers[check]:  # the table points at the gradients now there
            assert loaded[check] == [p.grad.data_ptr() for p in params]
            assert list(table.table[table.n:2 * table.n]) == loaded[check]
    assert answers == {"compiled": held, "python": held}
    if held:
        assert -1 not in loaded["compiled"]


def test_a_different_list_of_parameters_is_not_held():
    params, opt, table = stepped_table()
    assert not table.holds(params[:2], opt.state)
    assert not table.holds([params[0], params[2], params[1]], opt.state)


def test_the_python_reference_is_taken_where_the_check_is_off(monkeypatch):
    monkeypatch.setenv("TORCHOPT_ZOO_HOST_CHECK", "0")
    assert host.checker() is None
