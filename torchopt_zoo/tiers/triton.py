"""The Triton side of the fused tier: the pieces every rule's kernel shares, and the launching.

Each rule module writes its kernel for one block of ``BLOCK`` elements of a flat bucket: it reads
the parameter, the gradient and the state once, and writes the parameter and the state once, so a
step moves exactly the rule's floor bytes (docs/algorithms.md, "Memory traffic"). Arithmetic is
float32 whatever the parameter dtype (state is float32 for bf16/fp16 parameters). Every kernel
starts with the same head of arguments ``(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd)``
and the same constexprs ``HAS_SCALE, HAS_INF, MAXIMIZE, WD, LR_PTR, LARGE, BLOCK``, and starts with
:func:`head`, which combines:

* :func:`block`: the block's offsets and mask; with ``found_inf`` (AMP) set, no element is in
  range, so the step is skipped on the device without a host sync;
* :func:`param_and_grad`: the gradient as the rules take it (divided by AMP's ``grad_scale``,
  negated for ``maximize``, plus ``weight_decay * p`` for coupled weight decay, ``WD == 1``) and
  ``p *= 1 - lr * wd`` for decoupled decay (``WD == 2``);
* :func:`scalar`: ``lr`` as a float, or (``LR_PTR``) a one-element tensor on the bucket's device
  that the kernel reads (:func:`kernel_lr`), so a device ``lr`` costs no host sync;
* :func:`bias_correction`: ``1 - beta ** t = 1 - exp2(t log2 beta)`` with ``t`` read on the device
  (the caller advances it before the launch).

The kernels only read the gradient buffer. Triton is optional: without it the ``jit`` decorator
leaves the functions as they are and :func:`torchopt_zoo.tiers.flat.use_triton` never sends a
bucket here. ``TRITON_INTERPRET=1`` (set before ``torchopt_zoo`` is imported) runs the kernels on
CPU tensors.
"""

from __future__ import annotations

import math

import torch

from .._validation import as_float, check_one_element

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 (a broken Triton install must not break the CPU tiers)
    triton = tl = None

AVAILABLE = triton is not None
BLOCK = 2048


def jit(fn):
    """``triton.jit`` where Triton imports; else the plain function (never launched)."""
    return triton.jit(fn) if AVAILABLE else fn


@jit
def block(inf_ptr, n, BLOCK: tl.constexpr, HAS_INF: tl.constexpr, LARGE: tl.constexpr, TABLE: tl.constexpr,
          ROW: tl.constexpr):
    """The tensor index ``i``, ``offs`` and ``mask`` of this program's block. Flat buffers: block
    ``pid`` of ``n`` elements. Pointer tables (``TABLE``): ``n`` is the chunk table, one row of
    ``ROW`` int64 per program: ``(i, start, numel, address of each 0-dim state or 0)``."""
    pid = tl.program_id(0)
    if TABLE:
        row = n + pid * ROW
        i = tl.load(row)
        offs = tl.load(row + 1) + tl.arange(0, BLOCK)
        limit = tl.load(row + 2)
    else:
        if LARGE:  # offsets past 2**31 need 64-bit arithmetic
            pid = pid.to(tl.int64)
        i = 0
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        limit = n
    if HAS_INF:  # found_inf: no element is in range
        limit = tl.where(tl.load(inf_ptr) == 0, limit, 0)
    return i, offs, offs < limit


@jit
def entry(ptr, i, TABLE: tl.constexpr, DTYPE: tl.constexpr):
    """The base pointer of tensor ``i``: read from the int64 address table ``ptr`` (``TABLE``), or
    ``ptr`` itself (a flat buffer)."""
    base = ptr
    if TABLE:
        base = tl.load(ptr + i).to(tl.pointer_type(DTYPE))
    return base


@jit
def write_scalar(n, k, value, inf_ptr, HAS_INF: tl.constexpr, ROW: tl.constexpr):
    """Pointer tables: the first program of each tensor stores ``value`` into the tensor's ``k``-th
    0-dim state (``step`` is 0) whose address its chunk row holds (0 in the other rows); not where
    AMP's ``found_inf`` is set."""
    row = n + tl.program_id(0) * ROW
    addr = tl.load(row + 3 + k)
    write = addr != 0
    if HAS_INF:
        write = write & (tl.load(inf_ptr) == 0)
    if write:
        tl.store(addr.to(tl.pointer_type(tl.float32)), value)


@jit
def param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd,
                   HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        g = g / tl.load(scale_ptr)
    if MAXIMIZE:
        g = -g
    if WD == 1:
        g = g + wd * p
    if WD == 2:
        p = p * (1 - lr * wd)
    return p, g


@jit
def head(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
         MAXIMIZE: tl.constexpr, WD: tl.constexpr, LR_PTR: tl.constexpr, LARGE: tl.constexpr,
         BLOCK: tl.constexpr, TABLE: tl.constexpr, DTYPE: tl.constexpr, ROW: tl.constexpr):
    """What every kernel starts with: the parameter's base pointer, the tensor index ``i``, the
    block's ``offs`` and ``mask``, ``lr``, and the parameter and prepared gradient (:func:`block`,
    :func:`entry`, :func:`scalar`, :func:`param_and_grad`); with pointer tables it also stores the
    tensor's new ``step`` (the bucket's counter, advanced before the launch)."""
    i, offs, mask = block(inf_ptr, n, BLOCK, HAS_INF, LARGE, TABLE, ROW)
    p_ptr = entry(p_ptr, i, TABLE, DTYPE)
    g_ptr = entry(g_ptr, i, TABLE, DTYPE)
    lr = scalar(lr, LR_PTR)
    p, g = param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    if TABLE:
        write_scalar(n, 0, tl.load(step_ptr), inf_ptr, HAS_INF, ROW)
    return p_ptr, i, offs, mask, lr, p, g


@jit
def scalar(x, IS_PTR: tl.constexpr):
    """A scalar operand passed by value, or (``IS_PTR``) as a pointer to a 0-dim device tensor."""
    if IS_PTR:
        x = tl.load(x).to(tl.float32)
    return x


@jit
def bias_correction(step_ptr, log2_beta):
    return 1 - tl.exp2(tl.load(step_ptr) * log2_beta)


@jit
def load(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0)


@jit
def store(ptr, offs, value, mask):
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@jit
def first_moment(m_ptr, offs, mask, g, beta1):
    """``m = lerp(m, g, 1 - beta1)``, stored."""
    m = load(m_ptr, offs, mask)
    m = m + (1 - beta1) * (g - m)
    store(m_ptr, offs, m, mask)
    return m


@jit
def second_moment(v_ptr, offs, mask, x, beta2, extra):
    """``v = beta2 v + (1 - beta2) x^2 + extra``, stored."""
    v = beta2 * load(v_ptr, offs, mask) + (1 - beta2) * x * x + extra
    store(v_ptr, offs, v, mask)
    return v


def log2(beta: float) -> float:
    """``log2(beta)`` for :func:`bias_correction` (``-inf`` for ``beta = 0``: no correction)."""
    return math.log2(beta) if beta > 0 else -math.inf


def kernel_lr(lr, device: torch.device) -> float | torch.Tensor:
    """The learning rate as the kernels take it: a one-element tensor on the bucket's device as a
    pointer the kernels read (no host sync, as torch's fused Adam takes a device ``lr``; a
    scheduler's in-place update of it takes effect), anything else as a float."""
    if isinstance(lr, torch.Tensor) and lr.device == device:
        check_one_element("lr", lr)
        return lr
    return as_float("lr", lr)


def launches(rule, group: dict, bucket, group_state: dict,
             grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None) -> list[tuple]:
    """The kernel launches of one step of ``rule`` (a :class:`~torchopt_zoo.core.rule.Rule`) over
    ``bucket``: a :class:`~.flat.FusedBucket` (flat buffers) or a :class:`~.table.TableBucket`
    (address tables): ``(kernel, grid, args, constexprs)``, in order."""
    param = bucket.param
    table = getattr(bucket, "chunks", None)
    lr = kernel_lr(group["lr"], param.device)
    wd = group["weight_decay"]
    if table is None:
        n = param.numel()  # a multiple of flat.PAD, so the JIT specialises it and vectorises the accesses
        grid, mode = (triton.cdiv(n, BLOCK),), dict(TABLE=False, DTYPE=tl.float32, ROW=1)
    else:
        n, grid = table, (bucket.programs,)
        mode = dict(TABLE=True, DTYPE=bucket.triton_dtype, ROW=bucket.row)
    common = dict(HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None,
                  MAXIMIZE=group["maximize"], WD=0 if wd == 0 else 2 if group["decoupled_weight_decay"] else 1,
                  LR_PTR=isinstance(lr, torch.Tensor), LARGE=table is None and n > 2**31 - 1 - BLOCK, BLOCK=BLOCK,
                  **mode)
    head = (param, bucket.grad, bucket.steps, param if grad_scale is None else grad_scale,
            param if found_inf is None else found_inf, n, lr, wd)
    out = []
    for launch in rule.launches(group, bucket, group_state):
        tensors = [param if t is None else t for t in launch.tensors]  # placeholders the flags never touch
        out.append((launch.kernel, grid, (*head, *tensors, *launch.scalars), {**common, **launch.flags}))
    return out


def step(rule, group: dict, bucket, group_state: dict,
         grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None) -> None:
    """One step of ``rule`` over ``bucket``: advance the step counts, run the rule's prologue,
    launch the kernels, and take the count back where ``found_inf`` is set (all on the device)."""
    bucket.steps.add_(1)
    if rule.prologue is not None:
        rule.prologue(group, bucket, found_inf)
    for kernel, grid, args, constexprs in launches(rule, group, bucket, group_state, grad_scale, found_inf):
        kernel[grid](*args, **constexprs)
    if found_inf is not None:
        bucket.steps.sub_(found_inf.to(bucket.steps.dtype))
