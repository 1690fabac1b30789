"""Learning (section 5): :func:`train` and the parts it is made of (see :mod:`.loop`)."""

from alexnet.figures.report import read_metrics
from alexnet.training.loop import Stopped, train
from alexnet.training.recipe import model_args
from alexnet.training.step import LossWatch, NonFiniteError, grads_finite

__all__ = ["train", "Stopped", "model_args", "NonFiniteError", "LossWatch", "grads_finite", "read_metrics"]
