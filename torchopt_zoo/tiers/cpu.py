"""Single-pass CPU kernels over address tables: the default tier on CPU.

A rule describes its step in C (:class:`~torchopt_zoo.core.rule.CKernel`: per-tensor scalars and
the per-element update, written as its Triton kernel is); this module pastes it into the shared
template ``cpu_step.c`` (the gradient prepared as the reference tier prepares it, OpenMP threads
over chunks of the tensors), compiles it once per rule, dtype and option set with the system's C
compiler, and calls it through ``ctypes`` with the addresses of the user's own tensors: one call
per step, whatever the number of tensors, each element read and written once (the rule's floor
bytes), nothing rebound or copied. Where no C compiler works, or the tensors do not qualify
(not float32/float64 or their complex types, not contiguous), the caller takes torch's fused
kernel where torch has one for the rule, else the multi-tensor tier.

The compiled libraries are kept in ``$TORCHOPT_ZOO_CACHE`` (default
``~/.cache/torchopt_zoo``), named by a hash of the source, the options and the machine's CPU
flags. ``TORCHOPT_ZOO_CPU_KERNELS=0`` turns the tier off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import platform
import sys
import threading
import warnings
from array import array
from pathlib import Path

import torch
from torch import Tensor

from . import compiler
from .table import AddressTable

_TEMPLATE = Path(__file__).with_name("cpu_step.c")
# C's type per parameter dtype; complex parameters step as their real views (as every tier does)
_TYPES = {torch.float32: "float", torch.float64: "double", torch.complex64: "float", torch.complex128: "double"}
_LOCK = threading.Lock()
_LIBRARIES: dict[tuple, object] = {}  # key -> the compiled function, or None where compiling failed
_WARNED: set[str] = set()


def enabled() -> bool:
    return os.environ.get("TORCHOPT_ZOO_CPU_KERNELS", "1") != "0" and compiler.available()


def _cpu_flags() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags (a cache shared by different
    machines must not hand one a library built for another's instructions)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


@functools.cache
def _libmvec() -> bool:
    """Whether glibc's vector math library is there to link (x86-64 Linux)."""
    return platform.machine() in ("x86_64", "AMD64") and ctypes.util.find_library("mvec") is not None


def source(rule) -> str:
    """The C source of ``rule``'s step: the template with the rule's code pasted in."""
    ck = rule.cpu
    text = _TEMPLATE.read_text()
    for mark, code in (("TENSOR", ck.tensor), ("REDUCED", ck.reduced), ("ELEMENT", ck.element)):
        text = text.replace(f"/*{mark}*/", code)
    return text


def _defines(rule, group: dict, dtype: torch.dtype, step_dtype: torch.dtype, has_scale: bool) -> dict:
    ck = rule.cpu
    wd = group["weight_decay"]
    defines = dict(SCALAR=_TYPES[dtype], STEP_T=_TYPES[step_dtype], NSTATE=len(ck.states),
                   NSCALAR=len(rule.scalar_state), HAS_SCALE=int(has_scale), MAXIMIZE=int(bool(group["maximize"])),
                   WD=0 if wd == 0 else 2 if group["decoupled_weight_decay"] else 1)
    if ck.reduce_term:
        defines["REDUCE"] = 1
        defines["REDUCE_TERM"] = ck.reduce_term
    if _libmvec():
        defines["LIBMVEC"] = 1
    defines.update({name: int(value) for name, value in ck.flags(group).items()})
    return defines


def _build(src: str, defines: dict, key: str):
    """Compile ``src`` with ``defines`` (:func:`compiler.build`) and return its ``zoo_step``, or
    ``(None, what the compiler said)``."""
    flags = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
             "-std=gnu11", *(f"-D{k}={v}" for k, v in defines.items())]
    libraries = ("-lm", "-lmvec") if "LIBMVEC" in defines else ("-lm",)
    target, error = compiler.build(src, flags, "cpu", key, libraries)
    if target is None:
        return None, error
    function = ctypes.CDLL(str(target)).zoo_step
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double,
                         ctypes.c_double, ctypes.c_double, ctypes.c_void_p, ctypes.c_int]
    return function, ""


def library(rule, group: dict, dtype: torch.dtype, step_dtype: torch.dtype, has_scale: bool):
    """The compiled step of ``rule`` for these options, or None where it cannot be built."""
    defines = _defines(rule, group, dtype, step_dtype, has_scale)
    local = (rule.name, tuple(sorted(defines.items())))
    function = _LIBRARIES.get(local, False)
    if function is not False:
        return function
    with _LOCK:
        src = source(rule)
        key = hashlib.sha256(repr((src, sorted(defines.items()), _cpu_flags(), sys.platform)).encode()).hexdigest()[:24]
        function, error = _build(src, defines, key)
        if function is None and rule.name not in _WARNED:
            _WARNED.add(rule.name)
            warnings.warn(f"torchopt_zoo: the CPU kernel of {rule.name} did not compile; the step takes torch's "
                          f"fused kernel or the multi-tensor tier. The compiler said:\n{error}", RuntimeWarning,
                          stacklevel=3)
        _LIBRARIES[local] = function
    return function


class CpuTable(AddressTable):
    """The address table of one step of ``rule``'s C kernel over ``params`` (CPU, one dtype) and
    ``states``, column-major as ``cpu_step.c`` reads it. Build it with :meth:`build`, which returns
    None where the kernel cannot take the tensors; the gradient column is written by :meth:`load`
    when the gradients' addresses change."""

    def __init__(self, rule, params: list[Tensor], states: list[dict], keys: list[str]) -> None:
        self.dtype, self.step_dtype = params[0].dtype, states[0]["step"].dtype
        self.keys, self.scalar_keys = keys, ("step", *rule.scalar_state)
        self.n = n = len(params)
        columns = [p.data_ptr() for p in params] + [0] * n + [s["step"].data_ptr() for s in states]
        for key in rule.cpu.states:
            columns += [s[key].data_ptr() for s in states] if key in keys else [0] * n
        for key in rule.scalar_state:
            columns += [s[key].data_ptr() for s in states]
        self.table = array("q", columns)
        self.numel = array("q", [p.numel() * (2 if p.is_complex() else 1) for p in params])
        self._remember(params, states)

    @classmethod
    def build(cls, rule, group: dict, params: list[Tensor], states: list[dict]) -> CpuTable | None:
        """The table, where the kernel takes these tensors: a rule with a C step that compiles,
        float32/float64 (or complex64/complex128: their real views) contiguous CPU parameters,
        state tensors of their shape and dtype (the same keys for every parameter), step counts
        of one real dtype on the CPU."""
        first = params[0]
        if rule.cpu is None or first.device.type != "cpu" or first.dtype not in _TYPES or not enabled():
            return None
        keys = [k for k in rule.cpu.states if k in states[0]]
        step_dtype = states[0]["step"].dtype
        if step_dtype not in (torch.float32, torch.float64):
            return None
        for p, state in zip(params, states):
            if not p.is_contiguous() or any(k not in state for k in (*keys, *rule.scalar_state)):
                return None
            if any(k in state and k not in keys for k in rule.cpu.states):
                return None
            if any(state[k].shape != p.shape or state[k].dtype != p.dtype or not state[k].is_contiguous()
                   for k in keys):
                return None
            if any(state[k].dtype != step_dtype or state[k].device.type != "cpu" or state[k].numel() != 1
                   for k in ("step", *rule.scalar_state)):
                return None
        if library(rule, group, first.dtype, step_dtype, False) is None:
            return None
        return cls(rule, params, states, keys)

    def _take(self, addresses: array) -> None:
        self.table[self.n:2 * self.n] = addresses

    def step(self, rule, group: dict, group_state: dict, grad_scale: Tensor | None, found_inf: Tensor | None) -> bool:
        """One call of the kernel (the gradient column loaded); False where it could not be built
        for the group's current options, or the group-wide state is not what the kernel reads
        (nothing was touched)."""
        function = library(rule, group, self.dtype, self.step_dtype, grad_scale is not None)
        ck = rule.cpu
        shared = ck.group_scalar(group_state) if ck.group_scalar is not None else None
        if function is None or (shared is not None and (
                shared.device.type != "cpu" or shared.numel() != 1 or shared.dtype != self.dtype.to_real())):
            return False
        if found_inf is not None and bool(found_inf.item()):  # AMP: an inf/NaN gradient skips the step (a CPU read)
            return True
        scalars = array("d", (list(ck.scalars(group)) + [0.0] * 8)[:8])
        group_scalar = 0 if shared is None else shared.data_ptr()
        scale = float(grad_scale) if grad_scale is not None else 1.0
        code = function(self.n, self.table.buffer_info()[0], self.numel.buffer_info()[0], scalars.buffer_info()[0],
                        float(group["lr"]), float(group["weight_decay"]), scale, group_scalar, torch.get_num_threads())
        if code != 0:
            raise MemoryError(f"{rule.name}: the CPU kernel could not allocate its work list")
        return True
