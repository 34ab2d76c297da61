"""The address tables' steady-state check, compiled: :meth:`AddressTable.holds
<torchopt_zoo.tiers.table.AddressTable.holds>` per tensor without the interpreter's overhead.

``host_check.c`` is a CPython extension with one function, ``holds``, that does what
``AddressTable._holds_reference`` does in Python: every parameter the same object at the same
address, its state dict holding the same tensors, and its gradient there, dense, contiguous and of
the parameters' dtype, with the gradients' addresses written to an array. It is built once per
interpreter with the system's C compiler and the interpreter's headers and kept in
``$TORCHOPT_ZOO_CACHE/host`` (``tiers/compiler.py``). Where it cannot be built (no compiler, no
``Python.h``) or ``TORCHOPT_ZOO_HOST_CHECK=0`` is set, :func:`checker` answers None and the tables
take the Python reference: the same answers, about twice the host time per tensor.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

from . import compiler

_SOURCE = Path(__file__).with_name("host_check.c")


@functools.cache
def _compiled():
    include = sysconfig.get_paths().get("include") or ""
    if not compiler.available() or not os.path.exists(os.path.join(include, "Python.h")):
        return None
    src = _SOURCE.read_text()
    key = hashlib.sha256(repr((src, sys.version, include, sys.platform)).encode()).hexdigest()[:24]
    flags = ["-O2", "-std=gnu11", f"-I{include}"]
    if sys.platform == "darwin":  # the interpreter's symbols resolve when it loads the module
        flags += ["-undefined", "dynamic_lookup"]
    target, _ = compiler.build(src, flags, "host", key)
    if target is None:
        return None
    spec = importlib.util.spec_from_file_location("_zoo_host", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.holds


def checker():
    """The compiled ``holds`` (see the module's docstring), or None."""
    return None if os.environ.get("TORCHOPT_ZOO_HOST_CHECK", "1") == "0" else _compiled()
