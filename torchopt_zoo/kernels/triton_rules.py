"""The fused tier's Triton kernels: one pass over a group's flat buffers per step.

Each kernel is the rule of :mod:`.reference` written for one block of ``BLOCK`` elements: it reads
the parameter, the gradient and the state once, and writes the parameter and the state once, so a
step moves exactly the bytes of ALGORITHMS.md section 7. Arithmetic is float32 whatever the
parameter dtype (state is float32 for bf16/fp16 parameters). Shared by every kernel:

* the gradient as the rules take it: divided by AMP's ``grad_scale``, negated for ``maximize``,
  plus ``weight_decay * p`` for coupled weight decay (``WD == 1``); ``p *= 1 - lr * wd`` for
  decoupled (``WD == 2``);
* ``found_inf`` (AMP): when it is non-zero every load and store is masked off, so the step is
  skipped on the device without a host sync;
* the step count ``t`` is read from the device (the caller advances it before the launch), and
  bias corrections are ``1 - beta ** t = 1 - exp2(t * log2(beta))``;
* ``lr``: a float, or (``LR_PTR``) a one-element tensor on the bucket's device that the kernel
  reads (:func:`kernel_lr`), so a device ``lr`` costs no host sync.

The kernels only read the gradient buffer. Imported lazily, only where Triton runs
(:func:`torchopt_zoo.kernels.fused.use_triton`); ``TRITON_INTERPRET=1`` runs them on CPU tensors.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._validation import as_float, check_one_element

BLOCK = 2048


@triton.jit
def _block(inf_ptr, n, BLOCK: tl.constexpr, HAS_INF: tl.constexpr, LARGE: tl.constexpr):
    pid = tl.program_id(0)
    if LARGE:  # offsets past 2**31 need 64-bit arithmetic
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    if HAS_INF:  # found_inf: no element is in range
        n = tl.where(tl.load(inf_ptr) == 0, n, 0)
    return offs, offs < n


@triton.jit
def _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd,
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


@triton.jit
def _scalar(x, IS_PTR: tl.constexpr):
    """A scalar operand passed by value, or (``IS_PTR``) as a pointer to a 0-dim device tensor."""
    if IS_PTR:
        x = tl.load(x).to(tl.float32)
    return x


@triton.jit
def _bias_correction(step_ptr, log2_beta):
    return 1 - tl.exp2(tl.load(step_ptr) * log2_beta)


@triton.jit
def _adam_step(num, v, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL: tl.constexpr):
    """``(num/bc1) / (sqrt(v/bc2) + eps)`` (torch), or ``sqrt(bc2)/bc1 num / (sqrt(v) + eps)``."""
    bc1 = _bias_correction(step_ptr, log2_beta1)
    bc2 = _bias_correction(step_ptr, log2_beta2)
    if EPS_ORIGINAL:
        return (tl.sqrt(bc2) / bc1) * num / (tl.sqrt(v) + eps)
    return (num / bc1) / (tl.sqrt(v) / tl.sqrt(bc2) + eps)


@triton.jit
def _store(ptr, offs, value, mask):
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _first_moment(m_ptr, offs, mask, g, beta1):
    """``m = lerp(m, g, 1 - beta1)``, stored."""
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    m = m + (1 - beta1) * (g - m)
    _store(m_ptr, offs, m, mask)
    return m


@triton.jit
def _second_moment(v_ptr, offs, mask, x, beta2, extra):
    """``v = beta2 v + (1 - beta2) x^2 + extra``, stored."""
    v = beta2 * tl.load(v_ptr + offs, mask=mask, other=0.0) + (1 - beta2) * x * x + extra
    _store(v_ptr, offs, v, mask)
    return v


@triton.jit
def adam_kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd,
                m_ptr, v_ptr, vmax_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
                HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
                LR_PTR: tl.constexpr, AMSGRAD: tl.constexpr, EPS_ORIGINAL: tl.constexpr, LARGE: tl.constexpr,
                BLOCK: tl.constexpr):
    """Adam / AdamW / AMSGrad: ``m = lerp(m, g, 1-b1)``, ``v = b2 v + (1-b2) g^2``,
    ``vmax = max(vmax, v)``, ``p -= lr (m/bc1) / (sqrt(v/bc2) + eps)``."""
    offs, mask = _block(inf_ptr, n, BLOCK, HAS_INF, LARGE)
    lr = _scalar(lr, LR_PTR)
    p, g = _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    m = _first_moment(m_ptr, offs, mask, g, beta1)
    v = _second_moment(v_ptr, offs, mask, g, beta2, 0.0)
    if AMSGRAD:
        v = tl.maximum(tl.load(vmax_ptr + offs, mask=mask, other=0.0), v)
        _store(vmax_ptr, offs, v, mask)
    p = p - lr * _adam_step(m, v, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL)
    _store(p_ptr, offs, p, mask)


@triton.jit
def adabelief_kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd,
                     m_ptr, s_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
                     HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
                     LR_PTR: tl.constexpr, EPS_ORIGINAL: tl.constexpr, LARGE: tl.constexpr,
                     BLOCK: tl.constexpr):
    """AdaBelief: ``m = lerp(m, g, 1-b1)``, ``s = b2 s + (1-b2) (g - m)^2 + eps``, Adam's step with ``s``."""
    offs, mask = _block(inf_ptr, n, BLOCK, HAS_INF, LARGE)
    lr = _scalar(lr, LR_PTR)
    p, g = _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    m = _first_moment(m_ptr, offs, mask, g, beta1)
    s = _second_moment(s_ptr, offs, mask, g - m, beta2, eps)
    p = p - lr * _adam_step(m, s, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL)
    _store(p_ptr, offs, p, mask)


@triton.jit
def diffgrad_kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd,
                    m_ptr, v_ptr, prev_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
                    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
                    LR_PTR: tl.constexpr, EPS_ORIGINAL: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr):
    """diffGrad: Adam's moments; the step's numerator ``sigmoid(|g_prev - g|) m``; ``g_prev = g``."""
    offs, mask = _block(inf_ptr, n, BLOCK, HAS_INF, LARGE)
    lr = _scalar(lr, LR_PTR)
    p, g = _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    m = _first_moment(m_ptr, offs, mask, g, beta1)
    v = _second_moment(v_ptr, offs, mask, g, beta2, 0.0)
    prev = tl.load(prev_ptr + offs, mask=mask, other=0.0)
    _store(prev_ptr, offs, g, mask)
    xi = tl.sigmoid(tl.abs(prev - g))
    p = p - lr * _adam_step(xi * m, v, step_ptr, log2_beta1, log2_beta2, eps, EPS_ORIGINAL)
    _store(p_ptr, offs, p, mask)


@triton.jit
def adagrad_kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, s_ptr, lr_decay, eps,
                   HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
                   LR_PTR: tl.constexpr, LARGE: tl.constexpr, BLOCK: tl.constexpr):
    """AdaGrad: ``s += g^2``, ``p -= lr / (1 + (t-1) lr_decay) g / (sqrt(s) + eps)``."""
    offs, mask = _block(inf_ptr, n, BLOCK, HAS_INF, LARGE)
    lr = _scalar(lr, LR_PTR)
    p, g = _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    s = tl.load(s_ptr + offs, mask=mask, other=0.0) + g * g
    _store(s_ptr, offs, s, mask)
    clr = lr / (1 + (tl.load(step_ptr) - 1) * lr_decay)
    p = p - clr * g / (tl.sqrt(s) + eps)
    _store(p_ptr, offs, p, mask)


@triton.jit
def rmsprop_kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, v_ptr, ga_ptr, buf_ptr,
                   alpha, eps, momentum,
                   HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
                   LR_PTR: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, LARGE: tl.constexpr,
                   BLOCK: tl.constexpr):
    """RMSprop: ``v = a v + (1-a) g^2``, ``avg = sqrt(v [- ga^2]) + eps``; ``p -= lr g / avg``, or
    ``buf = mu buf + g / avg``, ``p -= lr buf``."""
    offs, mask = _block(inf_ptr, n, BLOCK, HAS_INF, LARGE)
    lr = _scalar(lr, LR_PTR)
    p, g = _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    v = _second_moment(v_ptr, offs, mask, g, alpha, 0.0)
    if CENTERED:
        ga = _first_moment(ga_ptr, offs, mask, g, alpha)
        v = v - ga * ga
    d = g / (tl.sqrt(v) + eps)
    if MOMENTUM:
        d = momentum * tl.load(buf_ptr + offs, mask=mask, other=0.0) + d
        _store(buf_ptr, offs, d, mask)
    _store(p_ptr, offs, p - lr * d, mask)


@triton.jit
def gd_kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, buf_ptr, momentum, dampening,
              HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr,
              LR_PTR: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, LARGE: tl.constexpr,
              BLOCK: tl.constexpr):
    """GD / heavy ball: ``buf = g`` at t = 1, else ``mu buf + (1-dampening) g``; ``p -= lr buf``
    (``nesterov``: ``p -= lr (g + mu buf)``)."""
    offs, mask = _block(inf_ptr, n, BLOCK, HAS_INF, LARGE)
    lr = _scalar(lr, LR_PTR)
    p, g = _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    d = g
    if MOMENTUM:
        buf = tl.load(buf_ptr + offs, mask=mask, other=0.0)
        buf = tl.where(tl.load(step_ptr) == 1, g, momentum * buf + (1 - dampening) * g)
        _store(buf_ptr, offs, buf, mask)
        d = buf
        if NESTEROV:
            d = g + momentum * buf
    _store(p_ptr, offs, p - lr * d, mask)


@triton.jit
def adagrad_norm_kernel(p_ptr, g_ptr, step_ptr, scale_ptr, inf_ptr, n, lr, wd, b2_ptr,
                        HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, MAXIMIZE: tl.constexpr,
                        WD: tl.constexpr, LR_PTR: tl.constexpr, NORM_PASS: tl.constexpr,
                        LARGE: tl.constexpr, BLOCK: tl.constexpr):
    """AdaGrad-Norm in two launches: ``NORM_PASS``: ``b^2 += sum g^2`` (one atomic add per block);
    then ``p -= lr g / sqrt(b^2)``."""
    offs, mask = _block(inf_ptr, n, BLOCK, HAS_INF, LARGE)
    lr = _scalar(lr, LR_PTR)
    p, g = _param_and_grad(p_ptr, g_ptr, scale_ptr, offs, mask, lr, wd, HAS_SCALE, MAXIMIZE, WD)
    if NORM_PASS:
        tl.atomic_add(b2_ptr, tl.sum(g * g, axis=0))
    else:
        _store(p_ptr, offs, p - lr * g / tl.sqrt(tl.load(b2_ptr)), mask)


def _log2(beta: float) -> float:
    return math.log2(beta) if beta > 0 else -math.inf


def _adam_args(group, flats, keys):
    beta1, beta2 = group["betas"]
    tensors = [flats.get(k) for k in keys]
    scalars = [beta1, beta2, _log2(beta1), _log2(beta2), group["eps"]]
    return tensors, scalars, {"EPS_ORIGINAL": group.get("eps_mode", "torch") == "original"}


def _args(name, group, flats, group_state):
    """(state tensors, scalars, flags) of rule ``name``, in its kernel's argument order."""
    if name == "adam":
        tensors, scalars, flags = _adam_args(group, flats, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
        return tensors, scalars, {**flags, "AMSGRAD": group["amsgrad"]}
    if name == "adabelief":
        return _adam_args(group, flats, ("exp_avg", "exp_avg_var"))
    if name == "diffgrad":
        return _adam_args(group, flats, ("exp_avg", "exp_avg_sq", "previous_grad"))
    if name == "adagrad":
        return [flats["sum"]], [group["lr_decay"], group["eps"]], {}
    if name == "rmsprop":
        return ([flats["square_avg"], flats.get("grad_avg"), flats.get("momentum_buffer")],
                [group["alpha"], group["eps"], group["momentum"]],
                {"CENTERED": group["centered"], "MOMENTUM": group["momentum"] > 0})
    if name == "gd":
        return ([flats.get("momentum_buffer")], [group["momentum"], group["dampening"]],
                {"MOMENTUM": group["momentum"] > 0, "NESTEROV": group["nesterov"]})
    if name == "adagrad_norm":
        return [group_state["norm_sum_sq"]], [], {"NORM_PASS": False}
    raise KeyError(name)


KERNELS = {"adam": adam_kernel, "adabelief": adabelief_kernel, "diffgrad": diffgrad_kernel,
           "adagrad": adagrad_kernel, "rmsprop": rmsprop_kernel, "gd": gd_kernel,
           "adagrad_norm": adagrad_norm_kernel}


def kernel_lr(lr, device: torch.device) -> float | torch.Tensor:
    """The learning rate as the kernels take it: a one-element tensor on the bucket's device as a
    pointer the kernels read (no host sync, as torch's fused Adam takes a device ``lr``; a
    scheduler's in-place update of it takes effect), anything else as a float."""
    if isinstance(lr, torch.Tensor) and lr.device == device:
        check_one_element("lr", lr)
        return lr
    return as_float("lr", lr)


def launches(name: str, group: dict, bucket, group_state: dict,
             grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None) -> list[tuple]:
    """The kernel launches of one step of rule ``name`` over ``bucket`` (a
    :class:`~.fused.FusedBucket`): ``(kernel, grid, args, constexprs)``, in order."""
    param = bucket.param
    lr = kernel_lr(group["lr"], param.device)
    tensors, scalars, flags = _args(name, group, bucket.flats, group_state)
    tensors = [param if t is None else t for t in tensors]  # placeholders the flags never touch
    wd = group["weight_decay"]
    n = param.numel()  # a multiple of fused.PAD, so the JIT specialises it and vectorises the accesses
    common = dict(HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None,
                  MAXIMIZE=group["maximize"], WD=0 if wd == 0 else 2 if group["decoupled_weight_decay"] else 1,
                  LR_PTR=isinstance(lr, torch.Tensor), LARGE=n > 2**31 - 1 - BLOCK, BLOCK=BLOCK)
    grid = (triton.cdiv(n, BLOCK),)
    head = (param, bucket.grad, bucket.steps, param if grad_scale is None else grad_scale,
            param if found_inf is None else found_inf, n, lr, wd)
    norm_pass = [(adagrad_norm_kernel, grid, (*head, *tensors), {**common, "NORM_PASS": True})]
    return (norm_pass if name == "adagrad_norm" else []) + [
        (KERNELS[name], grid, (*head, *tensors, *scalars), {**common, **flags})]


def step(name: str, group: dict, bucket, group_state: dict,
         grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None) -> None:
    """One step of rule ``name`` over ``bucket``: advance the step counts, launch the kernels, and
    take the count back where ``found_inf`` is set (all on the device)."""
    bucket.steps.add_(1)
    for kernel, grid, args, constexprs in launches(name, group, bucket, group_state, grad_scale, found_inf):
        kernel[grid](*args, **constexprs)
    if found_inf is not None:
        bucket.steps.sub_(found_inf.to(bucket.steps.dtype))
