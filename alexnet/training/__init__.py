"""Learning (section 5): :func:`train` and the parts it is made of (see :mod:`.loop`)."""

from alexnet.training.guards import NonFiniteError, StallWatch, grads_finite
from alexnet.training.loop import Stopped, train
from alexnet.training.recipe import model_args
from alexnet.training.run_dir import read_metrics

__all__ = ["train", "Stopped", "model_args", "NonFiniteError", "StallWatch", "grads_finite", "read_metrics"]
