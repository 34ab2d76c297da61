"""torch's own single-pass kernels (``torch._fused_adam_``, ``torch._fused_adagrad_``, ...) over a
group's tensor lists, for the rules that have one: the fused tier where Triton does not run (CPU).

A rule names its kernel in ``Rule.torch_kernel(group)``, which returns a runner
``run(params, grads, states, steps, lr, grad_scale, found_inf)`` for the group's options (None where
torch's kernel cannot express them); this module decides whether torch's kernel can take the lists, counts the steps as
torch's fused optimizers do (before the kernel, taken back where AMP's ``found_inf`` is set, on the
device), and hands the raw gradients over: the kernel applies ``maximize`` and weight decay itself,
so without AMP nothing is copied and ``p.grad`` is only read.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from .._validation import as_float, check_one_element
from ..core.state import LOW_PRECISION

_DEVICES = frozenset(_get_fused_kernels_supported_devices())


def kernel(rule, group: dict, params: list[Tensor], grads: list[Tensor], steps: list[Tensor]):
    """The runner of ``rule``'s torch kernel for these lists, or None where torch has none that
    takes them: real parameters of one dtype that keeps state in its own dtype (not bf16/fp16,
    whose state the zoo keeps in float32), gradients of that dtype, float32 step counts on the
    parameters' device, and options the kernel can express."""
    if rule.torch_kernel is None:
        return None
    first = params[0]
    if (first.device.type not in _DEVICES or not first.is_floating_point() or first.dtype in LOW_PRECISION
            or steps[0].dtype != torch.float32 or steps[0].device != first.device):
        return None
    dtype, device = first.dtype, first.device
    if not all(p.dtype == dtype and g.dtype == dtype and p.device == device and g.layout == torch.strided
               for p, g in zip(params, grads)):
        return None
    return rule.torch_kernel(group)


def check_fused_device(p: Tensor) -> None:
    """``fused=True`` as torch.optim takes it: a parameter with a gradient must be a floating point
    (or complex) tensor on a device with fused kernels; a RuntimeError before its state is made."""
    if p.device.type not in _DEVICES or not (p.is_floating_point() or p.is_complex()):
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                           f"supported devices: {sorted(_DEVICES)}; got {p.dtype} on {p.device}")


def lr_for(group: dict, device: torch.device):
    """``lr`` as torch's kernels take it: a tensor on the parameters' device, else a float."""
    lr = group["lr"]
    if isinstance(lr, Tensor) and lr.device == device:
        check_one_element("lr", lr)
        return lr
    return as_float("lr", lr)


def launch(run, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict], steps: list[Tensor],
           grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
    """Call a runner from :func:`kernel`. torch's kernels unscale the gradients in place when given
    ``grad_scale``; the zoo never writes ``p.grad``, so a scaled step divides copies instead."""
    device = params[0].device
    if grad_scale is not None:
        grads = torch._foreach_div(grads, grad_scale.to(device))
    run(params, grads, states, steps, lr_for(group, device), None,
        None if found_inf is None else found_inf.to(device))


def step(run, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict],
         grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
    """One step of a runner from :func:`kernel` over the lists, the step counts kept as torch does
    (advanced before the kernel, taken back on the device where ``found_inf`` is set)."""
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    launch(run, group, params, grads, states, steps, grad_scale, found_inf)
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf.to(steps[0].device)] * len(steps))
