/* The steady-state check of an address table in C (torchopt_zoo/tiers/host.py): what
 * AddressTable._holds_reference in torchopt_zoo/tiers/table.py does in Python, per tensor without
 * the interpreter's overhead. A CPython extension with one function:
 *
 *   holds(params, stored, param_addresses, dicts, keys, tensors, grad_addresses, scratch, dtype) -> int
 *
 * params: the group's parameters now (a list); stored: the parameters the table was built for;
 * param_addresses, grad_addresses, scratch: addresses of int64 arrays of len(params) (the table's
 * parameter and gradient addresses, and where this call writes the gradients' addresses); dicts:
 * each parameter's state dict; keys: a tuple of the state keys the table holds; tensors: the state
 * tensors the table was built for, len(keys) per parameter, in order; dtype: the parameters' dtype.
 *
 * Returns 0 where the table no longer holds the group (a parameter replaced or rebound, a state
 * tensor replaced or missing, a gradient missing, sparse, non-contiguous or of another dtype), 1
 * where it does and every gradient has the address the table holds, 2 where it does and the
 * gradients' addresses (all written to scratch) changed. Errors other than those a missing or
 * sparse gradient raises propagate. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *DATA_PTR, *GRAD, *DTYPE, *IS_CONTIGUOUS;

/* -1: an error to propagate; 0: no address (an error the Python check catches, cleared); 1: *out */
static int address(PyObject *tensor, int64_t *out)
{
    PyObject *value = PyObject_VectorcallMethod(DATA_PTR, &tensor, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (value == NULL)
        goto failed;
    *out = (int64_t)PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (*out == -1 && PyErr_Occurred())
        goto failed;
    return 1;
failed:
    if (PyErr_ExceptionMatches(PyExc_RuntimeError) || PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* whether gradient g is one the kernels take: of the parameters' dtype, contiguous (-1: an error) */
static int takes(PyObject *g, PyObject *dtype)
{
    PyObject *its = PyObject_GetAttr(g, DTYPE);
    if (its == NULL)
        return -1;
    Py_DECREF(its);
    if (its != dtype)
        return 0;
    PyObject *contiguous = PyObject_VectorcallMethod(IS_CONTIGUOUS, &g, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (contiguous == NULL)
        return -1;
    Py_DECREF(contiguous);
    return contiguous == Py_True;
}

static PyObject *holds(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 9 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || !PyList_Check(args[3])
        || !PyTuple_Check(args[4]) || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "holds(params: list, stored: list, param_addresses: int, dicts: list, "
                                         "keys: tuple, tensors: list, grad_addresses: int, scratch: int, dtype)");
        return NULL;
    }
    PyObject *params = args[0], *stored = args[1], *dicts = args[3], *keys = args[4], *tensors = args[5];
    PyObject *dtype = args[8];
    const Py_ssize_t n = PyList_GET_SIZE(params), nk = PyTuple_GET_SIZE(keys);
    if (PyList_GET_SIZE(stored) != n || PyList_GET_SIZE(dicts) != n || PyList_GET_SIZE(tensors) != n * nk)
        return PyLong_FromLong(0);
    const int64_t *param_addresses = PyLong_AsVoidPtr(args[2]), *grad_addresses = PyLong_AsVoidPtr(args[6]);
    int64_t *scratch = PyLong_AsVoidPtr(args[7]);
    if (PyErr_Occurred())
        return NULL;
    int changed = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject *p = PyList_GET_ITEM(params, i), *state = PyList_GET_ITEM(dicts, i);
        int64_t at;
        int got;
        if (p != PyList_GET_ITEM(stored, i) || !PyDict_Check(state))
            return PyLong_FromLong(0);
        if ((got = address(p, &at)) <= 0)
            return got < 0 ? NULL : PyLong_FromLong(0);
        if (at != param_addresses[i])
            return PyLong_FromLong(0);
        for (Py_ssize_t k = 0; k < nk; ++k) {
            PyObject *value = PyDict_GetItemWithError(state, PyTuple_GET_ITEM(keys, k));
            if (value == NULL && PyErr_Occurred())
                return NULL;
            if (value != PyList_GET_ITEM(tensors, i * nk + k))
                return PyLong_FromLong(0);
        }
        PyObject *g = PyObject_GetAttr(p, GRAD);
        if (g == NULL)
            return NULL;
        got = g == Py_None ? 0 : address(g, &at);
        if (got > 0)
            got = takes(g, dtype);
        Py_DECREF(g);
        if (got <= 0)
            return got < 0 ? NULL : PyLong_FromLong(0);
        changed |= at != grad_addresses[i];
        scratch[i] = at;
    }
    return PyLong_FromLong(changed ? 2 : 1);
}

static PyMethodDef METHODS[] = {
    {"holds", (PyCFunction)(void (*)(void))holds, METH_FASTCALL, "The steady-state check of an address table."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_zoo_host", NULL, -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__zoo_host(void)
{
    DATA_PTR = PyUnicode_InternFromString("data_ptr");
    GRAD = PyUnicode_InternFromString("grad");
    DTYPE = PyUnicode_InternFromString("dtype");
    IS_CONTIGUOUS = PyUnicode_InternFromString("is_contiguous");
    if (DATA_PTR == NULL || GRAD == NULL || DTYPE == NULL || IS_CONTIGUOUS == NULL)
        return NULL;
    return PyModule_Create(&MODULE);
}
