"""torchopt_zoo: drop-in ``torch.optim`` optimizers on one direction-rule / step-size core.

Every optimizer is a direction rule (``torchopt_zoo/rules/<name>.py``, one module per rule) plus a
step size (a learning rate, a line search from :mod:`torchopt_zoo.stepsize`, or an estimated
smoothness); docs/architecture.md describes the layout."""

from . import batch, compression, schedules, stepsize
from .accelerated import BregmanAccelerated, HigherOrderAccelerated
from .batch import AdAdaGrad, AdAdaGradNorm
from .core.optimizer import ZooOptimizer
from .rules import (GD, OPTIMIZERS, AdaBelief, Adadelta, Adagrad, AdaGradNorm, Adam, Adamax, AdamW, DiffGrad, Lion,
                    NAdam, RAdam, RMSprop)
from .stepsize import Armijo, Backtracking, DescentLemma, line_search

__version__ = "0.1.0"

__all__ = ["ZooOptimizer", "OPTIMIZERS", "GD", "AdaBelief", "Adagrad", "AdaGradNorm", "Adam", "AdamW",
           "DiffGrad", "RMSprop", "Lion", "NAdam", "RAdam", "Adamax", "Adadelta", "BregmanAccelerated",
           "HigherOrderAccelerated", "Armijo", "Backtracking", "DescentLemma", "line_search",
           "AdAdaGrad", "AdAdaGradNorm", "stepsize", "schedules", "compression", "batch"]
