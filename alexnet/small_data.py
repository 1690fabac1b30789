"""The recipe for small data sets: what ``alexnet train`` uses when a training set is far from ImageNet's.

The paper's recipe (section 5) is made for 1.2 million images of 256 px: batch 128, learning rate
0.01, weights drawn from N(0, 0.01) acting on raw 0-255 pixels, 90 epochs with the rate cut on
validation plateaus. On a few hundred photographs it diverges or sits at chance, and its plateau
rule, judged on a handful of validation images, cuts the rate by epoch 17 (the measurements behind
each choice below: ``benchmarks/small_data.py``, ``docs/results.md``). So ``alexnet train`` trains a
data set smaller than :data:`PAPER_SIZED_IMAGES` images, or of images smaller than the paper's
crops, with this recipe instead, unless told otherwise (``--recipe paper``, or any key given). The
network stays the paper's in kind (LRN, overlapping pooling, two towers, ReLU, dropout,
augmentation, PaperSGD); what changes:

* crops are 7/8 of the stored side (the paper's 224 of 256); conv1 3x3 stride 1 (``stem small``)
  for crops under 64 px (images under about 73 px), where the paper's 11x11 stride-4 conv1 would
  leave too little to pool;
* an eighth of the paper's kernels and units with the small stem, a quarter with the paper's:
  minutes on a CPU, and fewer weights for fewer images;
* fan-in scaled init (``init he``) and pixels scaled by 1/64, so centred inputs spread about 1:
  the paper's N(0, 0.01) on raw pixels stalls at ln(classes) or diverges here;
* a batch of about 1/256 of the training set (a power of two, 8 to 128), with the learning rate
  scaled with it (0.01 per 32 images);
* a fixed schedule of about :data:`STEPS` steps (16 to 90 epochs), the rate divided by 10 after
  60% and 85% of the epochs: no plateau rule on a few validation images.

On the built-in data (12,000 images of 32 px) this is the demo's recipe.
"""

from __future__ import annotations

from alexnet.model import feature_map_size

PAPER_SIZED_IMAGES = 100_000  # training images from which the paper's recipe is used as it is
PAPER_CROP = 224
STEPS = 6000  # optimizer steps the schedule aims at
LR_PER_32_IMAGES = 0.01
INPUT_SCALE = 1 / 64


def is_small(train_images: int, image_size: int) -> bool:
    """Whether a training set of ``train_images`` images of ``image_size`` px gets the small-data recipe."""
    return train_images < PAPER_SIZED_IMAGES or image_size < PAPER_CROP


def small_data_recipe(train_images: int, image_size: int, *, batch: int | None = None,
                      epochs: int | None = None) -> dict:
    """The keys of the small-data recipe (those that differ from the paper's) for this data set;
    ``batch`` and ``epochs``, when the user gives them, are kept and the rest fitted around them
    (the learning rate to the batch, the epochs to the batch, the milestones to the epochs)."""
    crop = max(1, round(image_size * 7 / 8))
    small_images = feature_map_size(crop, "paper") < 1  # the paper's 11x11 stride-4 conv1 leaves too little
    if batch is None:
        batch = 8
        while batch < 128 and batch * 2 * 256 <= train_images:
            batch *= 2
    if epochs is None:
        epochs = min(90, max(16, round(STEPS / max(1, train_images // batch))))
    return dict(
        recipe="small",
        stem="small" if small_images else "paper",
        width=0.125 if small_images else 0.25,
        crop_size=crop,
        init="he",
        input_scale=INPUT_SCALE,
        batch_size_per_device=batch,
        lr=LR_PER_32_IMAGES * batch / 32,
        epochs=epochs,
        schedule="milestones",
        milestones_epochs=tuple(sorted({max(1, round(0.6 * epochs)), max(1, round(0.85 * epochs))})),
    )


def describe(config, train_images: int, image_size: int) -> str:
    """One line at the start of a run of the small-data recipe: what it is, why, how to leave it."""
    why = (f"{train_images:,} training images, the paper's recipe is made for 1.2 million"
           if train_images < PAPER_SIZED_IMAGES else f"{image_size} px images, smaller than the paper's {PAPER_CROP} "
                                                     "px crops")
    return (f"recipe: small data ({why}): "
            f"{config.stem} stem, width {config.width:g}, {config.crop_size} px crops, fan-in init, pixels / "
            f"{1 / config.input_scale:g}, batch {config.batch_size_per_device} at lr {config.lr:g}, {config.epochs} "
            f"epoch{'s' * (config.epochs != 1)}, lr / 10 after epoch{'s' * (len(config.milestones_epochs) > 1)} "
            f"{' and '.join(map(str, config.milestones_epochs))}; --recipe paper "
            "trains the paper's recipe instead")
