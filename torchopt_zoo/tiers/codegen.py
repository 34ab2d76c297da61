"""What the fused tier's Triton kernels become on an NVIDIA GPU, read without one.

:func:`compile_launch` compiles one launch of :func:`.triton.launches` ahead of time for an
NVIDIA architecture (Triton's own compiler and the ``ptxas`` it ships; no GPU or driver needed),
specialised as Triton's JIT specialises a real launch: pointers aligned to 16 bytes and integers
divisible by 16 are marked so. :func:`traffic` reads the PTX's global loads and stores: the bytes
each element of the flat buffers costs, and whether every per-element access is 128 bits wide;
:func:`step_traffic` does both for every launch of one fused step, :func:`optimizer_traffic` for
an optimizer's first param group. The tests check every registered rule
against its floor bytes (docs/algorithms.md section 7) this way, on CPU-only CI, and ``bench/step_speed.py`` prints it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16",
                 torch.int64: "i64"}
_ACCESS = re.compile(r"\b(ld|st|atom|red)\.global((?:\.\w+)*)")
_WIDTH = {"b8": 1, "b16": 2, "b32": 4, "b64": 8, "f32": 4, "f64": 8, "u32": 4, "s32": 4, "u64": 8}


def _specialise(kernel, args: tuple, constexprs: dict):
    """Signature, constexprs and attributes as the JIT derives them from ``args``."""
    signature, attrs = {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, args)):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, bool):
            raise TypeError(f"{name}: pass flags as constexprs")
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        else:
            signature[name], aligned = "fp32", False
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    for name in constexprs:
        signature[name] = "constexpr"
    return signature, attrs


def compile_launch(kernel, args: tuple, constexprs: dict, arch: int = 90):
    """Triton's compiled kernel for ``kernel[grid](*args, **constexprs)`` on ``sm_<arch>``."""
    signature, attrs = _specialise(kernel, args, constexprs)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32))


@dataclass
class Traffic:
    """Global memory traffic of one compiled kernel, per element of its block."""

    bytes_per_element: float  # by the vector (per-element) loads and stores
    scalar_loads: int  # 32-bit-or-narrower loads: the 0-dim operands (step, grad_scale, found_inf, ...)
    scalar_stores: int  # stores narrower than 64 bits: per-element stores that were not vectorised
    atomics: int


def traffic(compiled, block: int) -> Traffic:
    """Read :class:`Traffic` from ``compiled``'s PTX for a block of ``block`` elements."""
    threads = compiled.metadata.num_warps * 32
    vector_bytes, scalar_loads, scalar_stores, atomics = 0, 0, 0, 0
    for op, suffix in _ACCESS.findall(compiled.asm["ptx"]):
        parts = suffix.strip(".").split(".")
        if op in ("atom", "red"):
            atomics += 1
            continue
        lanes = int(next((p[1:] for p in parts if re.fullmatch(r"v\d", p)), 1))
        width = lanes * _WIDTH[parts[-1]]
        if width >= 8:
            vector_bytes += width
        elif op == "ld":
            scalar_loads += 1
        else:
            scalar_stores += 1
    return Traffic(vector_bytes * threads / block, scalar_loads, scalar_stores, atomics)


def step_traffic(rule, group: dict, bucket, group_state: dict, arch: int = 90,
                 grad_scale: torch.Tensor | None = None, found_inf: torch.Tensor | None = None) -> list[Traffic]:
    """:class:`Traffic` of every kernel one fused step of ``rule`` over ``bucket`` launches,
    compiled for ``sm_<arch>``. Needs a process without ``TRITON_INTERPRET=1`` (the interpreter
    replaces ``triton.language``'s own jit functions, which the compiler then cannot use)."""
    from . import triton as _triton

    result = []
    for kernel, _, args, constexprs in _triton.launches(rule, group, bucket, group_state, grad_scale, found_inf):
        if not isinstance(kernel, triton.runtime.JITFunction):
            raise RuntimeError("step_traffic: the kernels are interpreted (TRITON_INTERPRET=1 was set when "
                               "Triton was imported); compile them in a process without it")
        result.append(traffic(compile_launch(kernel, args, constexprs, arch), constexprs["BLOCK"]))
    return result


def optimizer_traffic(optimizer, arch: int = 90, grad_scale: torch.Tensor | None = None,
                      found_inf: torch.Tensor | None = None):
    """``(bucket, traffic)``: the fused bucket of ``optimizer``'s first param group (parameters of
    one device and dtype, with gradients), built for the Triton kernels as on CUDA (padded) but not
    launched, and :func:`step_traffic` of its step."""
    saved = os.environ.get("TORCHOPT_ZOO_TRITON")
    os.environ["TORCHOPT_ZOO_TRITON"] = "1"  # a Triton bucket also for CPU tensors
    try:
        group = optimizer.param_groups[0]
        (bucket,) = optimizer._fused_group(group, *optimizer._collect(group)[:3]).buckets
    finally:
        if saved is None:
            del os.environ["TORCHOPT_ZOO_TRITON"]
        else:
            os.environ["TORCHOPT_ZOO_TRITON"] = saved
    return bucket, step_traffic(optimizer.rule, group, bucket, optimizer._shared_state(group), arch,
                                grad_scale, found_inf)


def _thread_bytes(compiled) -> int:
    """Bytes one thread moves by all the global loads and stores of ``compiled``'s PTX."""
    total = 0
    for op, suffix in _ACCESS.findall(compiled.asm["ptx"]):
        if op in ("atom", "red"):
            continue
        parts = suffix.strip(".").split(".")
        total += int(next((p[1:] for p in parts if re.fullmatch(r"v\d", p)), 1)) * _WIDTH[parts[-1]]
    return total


def table_traffic(optimizer, arch: int = 90) -> list[float]:
    """Bytes per element of every launch of one step of ``optimizer``'s first param group over
    address tables (:mod:`.table`: the default tier on CUDA), compiled for ``sm_<arch>``. A kernel
    compiled for a block of B elements moves, per thread, B/threads times its per-element bytes
    plus what each program reads once (table entries, step, lr); compiling at two block sizes and
    taking the difference leaves the per-element bytes alone, whatever the accesses' width."""
    from . import table as _table
    from . import triton as _triton

    group = optimizer.param_groups[0]
    params, grads, states, _ = optimizer._collect(group)
    bucket = _table.TableBucket.build(optimizer.rule, params, states)
    bucket.load(grads)
    result = []
    for kernel, _, args, constexprs in _triton.launches(optimizer.rule, group, bucket, optimizer._shared_state(group),
                                                        None, None):
        block = constexprs["BLOCK"]
        big, small = (compile_launch(kernel, args, {**constexprs, "BLOCK": b}, arch) for b in (block, block // 2))
        threads = big.metadata.num_warps * 32
        assert small.metadata.num_warps * 32 == threads
        result.append((_thread_bytes(big) - _thread_bytes(small)) * threads / (block - block // 2))
    return result
