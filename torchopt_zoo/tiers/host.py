"""The address tables' steady-state check, compiled: :meth:`AddressTable.holds
<torchopt_zoo.tiers.table.AddressTable.holds>` per tensor through torch's C++ API.

``host_check.cpp`` is a CPython extension whose ``holds`` does what
``AddressTable._holds_reference`` does in Python: every parameter the same object at the same
address, its state dict holding the same tensors, and its gradient there, dense, contiguous and of
its dtype, with the gradients' addresses written to an array (and ``same_items`` the first check of
``AddressTable._maps_to_dicts``). It reads the tensors' addresses and gradients from their C++
objects: reading them through torch's Python attributes costs more per tensor (about 0.8 µs on the
2-core test machine) than the whole compiled check.

It is built with the system's C++ compiler against the installed torch's headers (about 20 s,
once per machine and torch version; kept in ``$TORCHOPT_ZOO_CACHE/host``, ``tiers/compiler.py``).
The first use starts the build in a background thread and the tables take the Python reference
until it is ready, so no step waits for the compiler. Where it cannot be built (no C++ compiler, no
``Python.h``) or ``TORCHOPT_ZOO_HOST_CHECK=0`` is set, the tables keep the Python reference: the
same answers, a few times the host time per tensor.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
import threading
from pathlib import Path

import torch

from . import compiler

_SOURCE = Path(__file__).with_name("host_check.cpp")
_LOCK = threading.Lock()
_BUILD: dict = {}  # "thread": the background build; "module": the loaded extension, or None


def _recipe():
    """``(source, flags, libraries, key)`` of the build, or None where ``Python.h`` is missing."""
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.exists(os.path.join(include, "Python.h")):
        return None
    root = os.path.dirname(torch.__file__)
    src = _SOURCE.read_text()
    flags = ["-O2", "-std=c++17", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             f"-I{include}", f"-I{os.path.join(root, 'include')}",
             f"-I{os.path.join(root, 'include', 'torch', 'csrc', 'api', 'include')}"]
    if sys.platform == "darwin":  # the interpreter's symbols resolve when it loads the module
        flags += ["-undefined", "dynamic_lookup"]
    lib = os.path.join(root, "lib")
    libraries = (f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python")
    key = hashlib.sha256(repr((src, flags, libraries, sys.version, torch.__version__, sys.platform)).encode())
    return src, flags, libraries, key.hexdigest()[:24]


def _load(target: Path):
    """The extension at ``target``, or None where it does not load (then the Python reference)."""
    try:
        spec = importlib.util.spec_from_file_location("_zoo_host", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 (a library that does not load leaves the Python reference)
        return None
    return module


def _background(recipe) -> None:
    src, flags, libraries, key = recipe
    try:
        target, _ = compiler.build(src, flags, "host", key, libraries, language="c++")
    except OSError:
        target = None
    _BUILD["module"] = None if target is None else _load(target)


def checker(wait: bool = False):
    """The compiled extension (``holds`` and ``same_items``, see the module's docstring), or None:
    turned off, not buildable here, or (unless ``wait``) still being built in the background."""
    if os.environ.get("TORCHOPT_ZOO_HOST_CHECK", "1") == "0":
        return None
    if "module" not in _BUILD:
        with _LOCK:
            if "module" not in _BUILD and "thread" not in _BUILD:
                recipe = _recipe() if compiler.available("c++") else None
                built = None if recipe is None else compiler.library_path("host", recipe[3])
                if built is not None and not built.exists():
                    _BUILD["thread"] = threading.Thread(target=_background, args=(recipe,), daemon=True,
                                                        name="torchopt_zoo: building the host check")
                    _BUILD["thread"].start()
                else:  # built before (load it now), or not buildable here
                    _BUILD["module"] = None if built is None else _load(built)
        if wait and "thread" in _BUILD:
            _BUILD["thread"].join()
    return _BUILD.get("module")
