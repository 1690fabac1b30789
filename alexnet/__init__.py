"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) as training software on PyTorch."""

from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet, init_weights_
from alexnet.optim import MilestoneSchedule, PaperSGD, PlateauSchedule

__all__ = ["AlexNet", "LocalResponseNorm", "PaperSGD", "PlateauSchedule", "MilestoneSchedule", "init_weights_"]
__version__ = "0.1.0"
