"""The data of sections 2 and 4.1: prepared once into a store, then read and augmented in batches.

* :func:`prepare_store` (``alexnet prepare``): decode a source data set into a store of
  S x S uint8 images with the training set's mean image and pixel PCA (:mod:`.prepare`,
  :mod:`.statistics`), resumable after an interruption (:mod:`.progress`).
* :func:`open_store`: read a store; ``store.split("train").images`` is a memmap (raw store) or
  decodes JPEGs on access (JPEG store, :mod:`.jpeg`); both index like arrays (:mod:`.store`).
* :class:`Loader`: shuffled, sharded uint8 batches gathered by background threads (:mod:`.loader`).
* :class:`TrainAugment`, :class:`EvalPreprocess`, :func:`ten_crop_probabilities`: random crops,
  reflections, PCA lighting, mean subtraction and the ten-crop test of section 4.1, on whole
  batches on any device (:mod:`.augment`).
* :func:`builtin_fashion_mnist`: a small Fashion-MNIST subset shipped with the package.
"""

from pathlib import Path

from alexnet.data.augment import EvalPreprocess, TrainAugment, ten_crop_probabilities
from alexnet.data.loader import Loader
from alexnet.data.prepare import PrepareResult, prepare_store
from alexnet.data.store import Split, Store, open_store


def builtin_fashion_mnist() -> Path:
    """The folder of the shipped Fashion-MNIST subset (IDX files; see its README.md)."""
    return Path(__file__).resolve().parent.parent / "assets" / "fashion_mnist"


__all__ = [
    "EvalPreprocess",
    "Loader",
    "PrepareResult",
    "Split",
    "Store",
    "TrainAugment",
    "builtin_fashion_mnist",
    "open_store",
    "prepare_store",
    "ten_crop_probabilities",
]
