"""The zoo's optimizers."""

from .adaptive import AdaBelief, Adagrad, AdaGradNorm, Adam, AdamW, DiffGrad, RMSprop
from .gd import GD

__all__ = ["AdaBelief", "Adagrad", "AdaGradNorm", "Adam", "AdamW", "DiffGrad", "GD", "RMSprop"]
