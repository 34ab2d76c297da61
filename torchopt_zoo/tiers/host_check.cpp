// The steady-state check of an address table, compiled (torchopt_zoo/tiers/host.py): what
// AddressTable._holds_reference in torchopt_zoo/tiers/table.py does in Python, reading the tensors
// through torch's C++ API instead of its Python attributes (a tenth of the host time per tensor).
// A CPython extension; its main function:
//
//   holds(params, stored, param_addresses, dicts, keys, tensors, grad_addresses, scratch) -> int
//
// params: the group's parameters now (a list); stored: the parameters the table was built for;
// param_addresses, grad_addresses, scratch: addresses of int64 arrays of len(params) (the table's
// parameter and gradient addresses, and where this call writes the gradients' addresses); dicts:
// each parameter's state dict; keys: a tuple of the state keys the table holds; tensors: the state
// tensors the table was built for, len(keys) per parameter, in order.
//
// Returns 0 where the table no longer holds the group (a parameter replaced or rebound, a state
// tensor replaced or missing, a gradient missing, sparse, non-contiguous or not of its parameter's
// dtype), 1 where it does and every gradient has the address the table holds, 2 where it does and
// the gradients' addresses (all written to scratch) changed.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <exception>

namespace {

// 0 where the table does not hold parameter i, else 1 (2: its gradient's address changed)
int holds_one(PyObject *p, int64_t param_address, int64_t grad_address, int64_t *scratch)
{
    if (!THPVariable_Check(p))
        return 0;
    const at::Tensor &param = THPVariable_Unpack(p);
    if (!param.has_storage() || reinterpret_cast<intptr_t>(param.data_ptr()) != param_address)
        return 0;
    const at::Tensor &grad = param.grad();
    if (!grad.defined() || grad.layout() != at::kStrided || !grad.has_storage()
        || grad.scalar_type() != param.scalar_type() || !grad.is_contiguous())
        return 0;
    *scratch = reinterpret_cast<intptr_t>(grad.data_ptr());
    return *scratch == grad_address ? 1 : 2;
}

// Hints only (a prefetch never faults). The check of a parameter follows a chain of objects: the
// Python object and its state dict, the TensorImpl and the dict's keys, the AutogradMeta and the
// StorageImpl, the gradient's TensorImpl, the gradient's StorageImpl. Each stage of this pipeline
// prefetches one link for the parameter AHEAD * (stages left) ahead, reading the link before it,
// which the previous stage prefetched AHEAD parameters earlier: the cache misses of many parameters
// overlap instead of following each other (the check's time is mostly such misses).
constexpr Py_ssize_t AHEAD = 4;

void prefetch_ahead(PyObject *params, PyObject *dicts, Py_ssize_t i, Py_ssize_t n) noexcept
{
    auto impl_at = [&](Py_ssize_t j) -> c10::TensorImpl * {
        PyObject *p = j < n ? PyList_GET_ITEM(params, j) : nullptr;
        return p != nullptr && THPVariable_CheckExact(p) ? THPVariable_Unpack(p).unsafeGetTensorImpl() : nullptr;
    };
    auto grad_at = [&](Py_ssize_t j) -> c10::TensorImpl * {
        c10::TensorImpl *impl = impl_at(j);
        auto *meta = impl == nullptr ? nullptr : static_cast<torch::autograd::AutogradMeta *>(impl->autograd_meta());
        return meta == nullptr ? nullptr : meta->grad_.unsafeGetTensorImpl();
    };
    auto storage_of = [](c10::TensorImpl *impl) {
        if (impl != nullptr && impl->has_storage())
            __builtin_prefetch(impl->storage().unsafeGetStorageImpl());
    };
    try {
        if (i + 5 * AHEAD < n) {
            __builtin_prefetch(PyList_GET_ITEM(params, i + 5 * AHEAD));
            __builtin_prefetch(PyList_GET_ITEM(dicts, i + 5 * AHEAD));
        }
        if (c10::TensorImpl *impl = impl_at(i + 4 * AHEAD))
            __builtin_prefetch(impl);
        if (i + 4 * AHEAD < n && PyDict_Check(PyList_GET_ITEM(dicts, i + 4 * AHEAD)))
            __builtin_prefetch(reinterpret_cast<PyDictObject *>(PyList_GET_ITEM(dicts, i + 4 * AHEAD))->ma_keys);
        if (c10::TensorImpl *impl = impl_at(i + 3 * AHEAD)) {
            __builtin_prefetch(impl->autograd_meta());
            storage_of(impl);
        }
        if (c10::TensorImpl *grad = grad_at(i + 2 * AHEAD))
            __builtin_prefetch(grad);
        storage_of(grad_at(i + AHEAD));
    } catch (...) {
    }
}

PyObject *holds(PyObject *, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || !PyList_Check(args[3])
        || !PyTuple_Check(args[4]) || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "holds(params: list, stored: list, param_addresses: int, dicts: list, "
                                         "keys: tuple, tensors: list, grad_addresses: int, scratch: int)");
        return nullptr;
    }
    PyObject *params = args[0], *stored = args[1], *dicts = args[3], *keys = args[4], *tensors = args[5];
    const Py_ssize_t n = PyList_GET_SIZE(params), nk = PyTuple_GET_SIZE(keys);
    if (PyList_GET_SIZE(stored) != n || PyList_GET_SIZE(dicts) != n || PyList_GET_SIZE(tensors) != n * nk)
        return PyLong_FromLong(0);
    auto *param_addresses = static_cast<const int64_t *>(PyLong_AsVoidPtr(args[2]));
    auto *grad_addresses = static_cast<const int64_t *>(PyLong_AsVoidPtr(args[6]));
    auto *scratch = static_cast<int64_t *>(PyLong_AsVoidPtr(args[7]));
    if (PyErr_Occurred())
        return nullptr;
    int changed = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        prefetch_ahead(params, dicts, i, n);
        PyObject *p = PyList_GET_ITEM(params, i), *state = PyList_GET_ITEM(dicts, i);
        if (p != PyList_GET_ITEM(stored, i) || !PyDict_Check(state))
            return PyLong_FromLong(0);
        for (Py_ssize_t k = 0; k < nk; ++k) {
            PyObject *value = PyDict_GetItemWithError(state, PyTuple_GET_ITEM(keys, k));
            if (value == nullptr && PyErr_Occurred())
                return nullptr;
            if (value != PyList_GET_ITEM(tensors, i * nk + k))
                return PyLong_FromLong(0);
        }
        int got;
        try {
            got = holds_one(p, param_addresses[i], grad_addresses[i], scratch + i);
        } catch (const std::exception &) {  // a tensor without data (the Python check's RuntimeError)
            got = 0;
        }
        if (got == 0)
            return PyLong_FromLong(0);
        changed |= got == 2;
    }
    return PyLong_FromLong(changed ? 2 : 1);
}

// same_items(mapping: dict, keys: list, values: list) -> bool: whether the dict holds exactly these
// keys and values, in this order, by identity (no hashing: a tensor's hash is Python code)
PyObject *same_items(PyObject *, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyList_Check(args[1]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "same_items(mapping: dict, keys: list, values: list)");
        return nullptr;
    }
    PyObject *mapping = args[0], *keys = args[1], *values = args[2], *key, *value;
    const Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyDict_GET_SIZE(mapping) != n || PyList_GET_SIZE(values) != n)
        Py_RETURN_FALSE;
    Py_ssize_t position = 0;
    for (Py_ssize_t i = 0; PyDict_Next(mapping, &position, &key, &value); ++i)
        if (key != PyList_GET_ITEM(keys, i) || value != PyList_GET_ITEM(values, i))
            Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

PyMethodDef METHODS[] = {
    {"holds", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(holds)), METH_FASTCALL,
     "The steady-state check of an address table."},
    {"same_items", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(same_items)), METH_FASTCALL,
     "Whether a dict holds exactly these keys and values, by identity."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_zoo_host", nullptr, -1, METHODS, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__zoo_host(void)
{
    return PyModule_Create(&MODULE);
}
