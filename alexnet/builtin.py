"""The built-in data set and its recipe: what ``alexnet demo`` and the experiments run on by default.

Data: a class-balanced subset of Fashion-MNIST (12,000 training and 2,000 test images of 10
classes of clothing, 28x28 grayscale; MIT licence, Zalando Research) shipped with the package.
Prepared like ImageNet in section 2 (shorter side to S, centre crop, per-pixel mean image, PCA of
pixel values) with S = 32 instead of 256.

The recipe is the small-data one that ``alexnet train`` fits to any data set of this size
(:mod:`alexnet.small_data`): the paper's with the changes that a 28-pixel data set and a 5-minute
CPU budget need, and nothing else: two towers, LRN with the paper's constants, overlapping 3/2
pooling, ReLU, dropout 0.5, random crops (28 of 32, the paper's 224 of 256 in proportion),
reflections, PCA lighting, mean subtraction and PaperSGD with momentum 0.9, weight decay 0.0005
and lr 0.01 all stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from alexnet.config import TrainConfig
from alexnet.data import Store, builtin_fashion_mnist, open_store
from alexnet.errors import UserError
from alexnet.small_data import is_small, small_data_recipe

BUILTIN_IMAGE_SIZE = 32
# The small-data recipe that ``alexnet train`` fits to this data set (alexnet/small_data.py): conv1
# 3x3 stride 1 and an eighth of the paper's kernels and units, 28 px crops, fan-in init, pixels / 64,
# batch 32 at lr 0.01, 16 epochs with the lr / 10 after epochs 10 and 14; one loader thread.
BUILTIN_RECIPE = TrainConfig().replace(**small_data_recipe(12000, BUILTIN_IMAGE_SIZE), loader_workers=1)


def base_recipe(data: str | Path | None) -> TrainConfig:
    """The recipe a run on ``data`` starts from, as ``alexnet train`` picks it: :data:`BUILTIN_RECIPE`
    on the built-in data (None: prepared on first use), the small-data recipe fitted to a small data
    set (:mod:`alexnet.small_data`), the paper's otherwise (and for a folder that is no store: the
    command that opens it says what is wrong with it)."""
    if data_is_builtin(data):
        return BUILTIN_RECIPE
    try:
        store = open_store(data)
    except UserError:
        return TrainConfig()
    images = len(store.split("train")) if "train" in store.splits else 0
    return TrainConfig().replace(**small_data_recipe(images, store.image_size)) if is_small(images, store.image_size) \
        else TrainConfig()


def data_is_builtin(data: str | Path | None) -> bool:
    """Whether ``data`` means the built-in data: None (prepared on first use), or a store of it
    named as DATA, such as the ``data`` folder a demo or an experiment prepared (the paper's
    224-pixel crops would not fit its 32-pixel images). A folder that is no store is not."""
    if data is None:
        return True
    try:
        return is_builtin_store(open_store(data))
    except UserError:
        return False  # the command that opens it says what is wrong with it


BUILTIN_SPLITS = {"train": 12000, "val": 2000}  # images per split of the shipped subset


def is_builtin_store(store: Store) -> bool:
    """Whether ``store`` is the built-in subset as :func:`prepare_builtin` prepares it: its IDX
    source, classes and split sizes at :data:`BUILTIN_IMAGE_SIZE` (wherever the package lies)."""
    names = (builtin_fashion_mnist() / "classes.txt").read_text(encoding="utf-8").split("\n")
    m = store.manifest
    return (m.get("source_kind") == "idx" and store.image_size == BUILTIN_IMAGE_SIZE and store.channels == 1
            and store.classes == [n.strip() for n in names if n.strip()]
            and {s: m["splits"][s]["count"] for s in m["splits"]} == BUILTIN_SPLITS)


def prepare_builtin(store_dir: str | Path, *, show_progress: bool, log: Callable[[str], None]) -> Store:
    """The built-in data prepared into ``store_dir``: opened if it is there, prepared (again) if not.

    Another data set found there is refused, never trained on in the built-in data's name nor
    overwritten."""
    from alexnet.data.prepare import prepare_store

    try:
        store = open_store(store_dir)
    except UserError:
        log(f"preparing the built-in Fashion-MNIST subset into {store_dir}")
        prepare_store(builtin_fashion_mnist(), store_dir, image_size=BUILTIN_IMAGE_SIZE, progress_bar=show_progress,
                      force=True, log=log)
        return open_store(store_dir)
    if not is_builtin_store(store):
        raise UserError(f"{store_dir} holds another prepared data set ({store.num_classes} classes, "
                        f"{store.image_size} px, from {store.manifest.get('source', '?')}), not the built-in "
                        f"Fashion-MNIST subset; choose another --out, or give that data set as DATA where a command "
                        "takes one")
    return store
