"""One module per update rule: its state keys, reference math, multi-tensor math, Triton kernel and
launch arguments, floor bytes, and the optimizer classes built on it (docs/adding-an-optimizer.md).
Importing this package registers every rule's optimizers in :data:`OPTIMIZERS`, in this order."""

from ..core.rule import OPTIMIZERS
from .adam import Adam, AdamW
from .adagrad import Adagrad
from .adagrad_norm import AdaGradNorm
from .rmsprop import RMSprop
from .adabelief import AdaBelief
from .diffgrad import DiffGrad
from .gd import GD
from .lion import Lion
from .nadam import NAdam
from .radam import RAdam
from .adamax import Adamax
from .adadelta import Adadelta



def table() -> str:
    """The README's optimizer table, one row per registered optimizer, in registration order."""
    rows = ["| optimizer | paper | drop-in for | floor bytes/param (fp32) |", "|---|---|---|---|"]
    for cls in OPTIMIZERS:
        twin = f"`torch.optim.{cls.twin.__name__}`" if cls.twin is not None else "—"
        rows.append(f"| `{cls.__name__}` | {cls.paper} | {twin} | {cls.rule.floor_bytes} |")
    return "\n".join(rows)


__all__ = ["OPTIMIZERS", "table", "Adam", "AdamW", "Adagrad", "AdaGradNorm", "RMSprop", "AdaBelief", "DiffGrad", "GD", "Lion", "NAdam",
           "RAdam", "Adamax", "Adadelta"]
