"""Compressed updates with error feedback: compressors, simulated n-worker methods, and
``torch.distributed`` DDP communication hooks (docs/algorithms.md section 5)."""

from .compressors import Compressor, Identity, RandK, TopK
from .ddp import EFHookState, econtrol_hook, ef14_hook, ef21_hook
from .simulated import EF14, EF21, CompressedGD, EControl, EF21SGDM, ef21_step_size

__all__ = ["Compressor", "Identity", "RandK", "TopK", "CompressedGD", "EF14", "EF21", "EF21SGDM",
           "EControl", "ef21_step_size", "EFHookState", "ef21_hook", "econtrol_hook", "ef14_hook"]
