"""The training recipe as one frozen dataclass whose defaults are the paper's.

Every field is a command-line flag of ``alexnet train`` (``batch_size_per_device`` becomes
``--batch-size-per-device``) and a key of a config file (JSON or TOML). Unknown keys are errors.
The resolved config is saved as ``config.json`` in every run directory.

``recipe = "original"`` (``--recipe original``) is a shorthand for the authors' released recipe
(:data:`ORIGINAL_RECIPE`, from layers-145.cfg / layer-params-145.cfg / convdata.py and the run's
log): it sets each of those keys unless the same flags or file name the key themselves; the keys
given win. The resolved values, not the shorthand, are what a run uses and saves.

Configs saved by earlier versions (a ``config.json`` or a checkpoint's recipe: every key of that
version, none of the newer ones) are read as the runs they were (:func:`upgrade_saved`): before
``dropout_style`` existed, inverted dropout, the colour noise's ``"fb"`` scale, and
``lrn_convention "caffe"`` (which then meant alpha / n with k = 2) as ``"cuda-convnet"``; before
fc8's bias started at 0, fc8's bias of 1 and ``param_groups "paper"`` decaying the biases too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import numbers
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from alexnet.errors import UserError
from alexnet.model import check_towers, feature_map_size

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON config files only
    tomllib = None


# The groups of ``alexnet train --help``, in the order a person decides them; each field names its
# group. The first two hold what a first run needs; the README explains every key.
HELP_GROUPS = {
    "run": "the run",
    "network": "the network (section 3)",
    "details": "the network's details (the released code, other sizes)",
    "data": "data, augmentation and dropout (sections 2 and 4)",
    "learning": "optimisation and schedule (section 5)",
    "finetune": "fine-tuning",
    "speed": "speed and runtime",
    "checks": "seed, checkpoints, checks and output",
}


def _f(group: str, default, help: str, choices: tuple | None = None, metavar: str | None = None):
    return field(default=default, metadata=dict(group=group, help=help, choices=choices, metavar=metavar))


@dataclass(frozen=True)
class TrainConfig:
    # --- the network (section 3) ---
    arch: str = _f("network", "alexnet", "torchvision: fine-tune its weights", ("alexnet", "torchvision"))
    towers: int = _f("network", 2, "columns: 2 (the paper's two GPUs) or 1", (1, 2))
    lrn: bool = _f("network", True, "LRN after conv1, conv2 (section 3.3)")
    recipe: str = _f("run", "paper", "paper, small or original", ("paper", "small", "original"))
    lrn_convention: str = _f("details", "paper", "alpha/n: cuda-convnet k=2, caffe k=1", ("paper", "cuda-convnet", "caffe"))
    lrn_before_relu: bool = _f("details", False, "conv1's LRN before its ReLU")
    cnorm2: bool = _f("details", False, "released code's 5x5 norm after conv2")
    overlapping_pool: bool = _f("network", True, "max-pool 3/2 (section 3.4); off: 2/2")
    activation: str = _f("network", "relu", "after every learnable layer but fc8", ("relu", "tanh"))
    dropout: float = _f("data", 0.5, "probability on fc6, fc7 outputs; 0: off")
    dropout_style: str = _f("data", "paper", "paper: x (1-p) at test; or inverted", ("paper", "inverted"))
    width: float = _f("network", 1.0, "multiplier on all kernels and units")
    channels: tuple[int, ...] = _f("details", (), "kernels of conv1..conv5 (empty: the paper's x width)")
    fc_units: int = _f("details", 0, "units of fc6 and fc7 (0: 4096 x width)")
    conv6_channels: int = _f("details", 0, "kernels of a sixth conv layer (0: none)")
    stem: str = _f("network", "paper", "small: conv1 3x3 stride 1 (28-64 px)", ("paper", "small"))
    init: str = _f("details", "paper", "std 0.01; original: 0.03 in conv3-5", ("paper", "original", "he"))
    fc8_bias_zero: bool = _f("details", True, "fc8's bias starts at 0 (off: 1)")
    init_from: str = _f("finetune", "", "checkpoint whose layers start this run (not a resume)", metavar="PATH")
    freeze: tuple[str, ...] = _f("finetune", (), "layers never updated, e.g. conv1,conv2")

    # --- data and augmentation (sections 2 and 4.1) ---
    crop_size: int = _f("data", 224, "side of the network's input, in pixels")
    random_crop: bool = _f("data", True, "random crops (off: the centre crop)")
    flip: bool = _f("data", True, "random horizontal reflections")
    pca_lighting_std: float = _f("data", 0.1, "std of the PCA colour noise; 0: off")
    pca_scale: str = _f("data", "sqrt", "PCA noise P(a sqrt(l)) or P(a l/255)", ("sqrt", "fb"))
    lighting_shrink: bool = _f("data", False, "input / (1 + std) while noise is on")
    lighting_off_last_epochs: int = _f("data", 0, "no colour noise in the last N epochs")
    mean_centre_patch: bool = _f("data", False, "subtract the mean's centre patch")
    crop_chunk_images: int = _f("data", 1, "images sharing one crop and reflection")
    subtract_mean: bool = _f("data", True, "subtract the training set's mean image")
    mean_image: str = _f("finetune", "store", "mean image of the store or the parent", ("store", "parent"))
    input_scale: float = _f("data", 1.0, "multiply the centred pixels by this")
    shuffle_window_images: int = _f("data", 0, "0: full shuffle; N: in windows of N")

    # --- learning (section 5) ---
    epochs: int = _f("run", 90, "passes over the training set")
    batch_size_per_device: int = _f("run", 128, "images per process; global = x replicas")
    lr: float = _f("run", 0.01, "initial learning rate eps (section 5)")
    momentum: float = _f("learning", 0.9, "momentum of the update rule")
    weight_decay: float = _f("learning", 5e-4, "weight decay of the update rule")
    param_groups: str = _f("learning", "paper", "paper: one lr, no decay on biases",
                           ("paper", "uniform", "cuda-convnet", "caffe", "original"))
    conv1_lr_tenth_last_epochs: int = _f("learning", 0, "conv1's lr / 10 in the last N epochs")
    freeze_conv1_last_epochs: int = _f("learning", 0, "conv1 not updated in the last N epochs")
    schedule: str = _f("learning", "plateau", "when to divide the lr", ("plateau", "milestones"))
    plateau_patience_epochs: int = _f("learning", 5, "epochs without progress before a division")
    plateau_threshold: float = _f("learning", 1e-3, "drop in validation error that counts")
    max_lr_reductions: int = _f("learning", 3, "most divisions by the plateau schedule")
    milestones_epochs: tuple[int, ...] = _f("learning", (30, 60, 80), "divide the lr after these epochs")
    lr_factor: float = _f("learning", 0.1, "multiply the lr by this at a division")

    # --- the run ---
    seed: int = _f("checks", 0, "seed of every random draw")
    device: str = _f("run", "auto", "cpu, cuda or cuda:N; auto: cuda if any")
    precision: str = _f("speed", "auto", "auto: bf16 autocast on CUDA, else fp32", ("auto", "fp32", "bf16"))
    channels_last: str = _f("speed", "auto", "channels_last layout (auto: on CUDA)", ("auto", "on", "off"))
    compile: bool = _f("speed", False, "torch.compile the training step")
    compile_mode: str = _f("speed", "default", "the mode of --compile", ("default", "reduce-overhead", "max-autotune"))
    step_kernels: tuple[str, ...] = _f("speed", (), "faster kernels, the same sums: names, all or none")
    cuda_graph: bool = _f("speed", False, "replay each step as one CUDA graph")
    loader_workers: int = _f("speed", -1, "reader threads (0: none; -1: auto)")
    cpu_threads: int = _f("speed", 0, "CPU threads (0: one per core)")
    checkpoint_every_steps: int = _f("checks", 0, "also checkpoint every N steps (0: off)")
    max_steps_per_epoch: int = _f("checks", 0, "end each epoch after N steps (0: all)")
    on_nonfinite: str = _f("checks", "stop", "on NaN/inf: stop, or skip the step", ("stop", "skip"))
    nonfinite_check_every_steps: int = _f("checks", 0, "check for NaN/inf every N steps (0: auto)")
    collective_timeout_minutes: float = _f("speed", 0.0, "max wait for other ranks (0: torch's)")
    deterministic: bool = _f("speed", False, "bitwise-repeatable kernels (slower)")
    tower_parallel: bool = _f("speed", False, "two towers on two ranks (section 3.2)")
    tensorboard: bool = _f("checks", False, "TensorBoard events in RUN/tensorboard")

    def __post_init__(self) -> None:
        _check_types(self)
        for field_ in fields(self):
            choices = field_.metadata.get("choices")
            value = getattr(self, field_.name)
            if choices is not None and value not in choices:
                raise UserError(f"{field_.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
        _check_ranges(self)
        twice = sorted({m for m in self.milestones_epochs if self.milestones_epochs.count(m) > 1})
        if twice:  # torch's MultiStepLR would divide twice there; a schedule that reads so is a typo more often
            raise UserError(f"milestones_epochs lists epoch {', '.join(map(str, twice))} more than once; list each "
                            "epoch once (lr_factor sets how much one milestone divides the lr)")
        if self.on_nonfinite == "skip" and self.nonfinite_check_every_steps > 1:
            raise UserError("on_nonfinite 'skip' must check every step (the verdict comes before the update); "
                            "set nonfinite_check_every_steps to 1 or 0")
        if self.compile_mode != "default" and not self.compile:
            raise UserError(f"compile_mode {self.compile_mode!r} needs compile on: give --compile, or "
                            "--compile-mode default")
        if self.arch == "torchvision":
            _refuse_paper_network_keys(self)
        object.__setattr__(self, "step_kernels", _expand_step_kernels(self.step_kernels))
        if self.tower_parallel and self.step_kernels:
            raise UserError("step_kernels work on whole networks; tower_parallel splits them over two ranks: "
                            "drop one of the two")
        if self.mean_image == "parent" and not (self.init_from and self.subtract_mean):
            raise UserError("mean_image 'parent' subtracts the mean image of the init_from checkpoint: "
                            + ("give --init-from" if not self.init_from else "drop --no-subtract-mean")
                            + ", or leave --mean-image store")
        if self.tower_parallel and self.towers != 2:
            raise UserError(f"tower_parallel (--tower-parallel) needs towers=2 (--towers 2); got towers={self.towers}")
        try:
            check_towers(self.channels, self.towers, "channels")
        except ValueError as e:
            raise UserError(str(e)) from None
        layers = LAYERS + (("conv6",) if self.conv6_channels else ())
        unknown = [name for name in self.freeze if name not in layers]
        if unknown:
            raise UserError(f"freeze: no layer {', '.join(map(repr, unknown))}; the layers are {', '.join(layers)}")
        if self.arch == "torchvision":
            if self.crop_size < TORCHVISION_MIN_CROP:
                raise UserError(f"crop_size {self.crop_size} is too small for torchvision's layout "
                                f"(needs at least {TORCHVISION_MIN_CROP} px)")
        elif feature_map_size(self.crop_size, self.stem, self.overlapping_pool) < 1:
            smallest = next(s for s in range(1, 1024) if feature_map_size(s, self.stem, self.overlapping_pool) >= 1)
            hint = "; use stem 'small' for 28-64 px images" if self.stem == "paper" else ""
            raise UserError(
                f"crop_size {self.crop_size} is too small for stem {self.stem!r} "
                f"(needs at least {smallest} px){hint}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _check_ranges(config: "TrainConfig") -> None:
    """Each number of ``config`` in its range, or a UserError naming the key and the range."""
    ranges = [
        ("epochs", config.epochs >= 1, "at least 1"),
        ("batch_size_per_device", config.batch_size_per_device >= 1, "at least 1"),
        ("lr", config.lr > 0, "positive"),
        ("momentum", 0 <= config.momentum < 1, "in [0, 1)"),
        ("weight_decay", config.weight_decay >= 0, ">= 0"),
        ("dropout", 0 <= config.dropout < 1, "in [0, 1)"),
        ("width", config.width > 0, "positive"),
        ("pca_lighting_std", config.pca_lighting_std >= 0, ">= 0"),
        ("lighting_off_last_epochs", config.lighting_off_last_epochs >= 0, ">= 0"),
        ("freeze_conv1_last_epochs", config.freeze_conv1_last_epochs >= 0, ">= 0"),
        ("conv1_lr_tenth_last_epochs", config.conv1_lr_tenth_last_epochs >= 0, ">= 0"),
        ("crop_chunk_images", config.crop_chunk_images >= 1, "at least 1 (1: every image its own draws)"),
        ("fc_units", config.fc_units >= 0, ">= 0 (0: 4096 x width)"),
        ("conv6_channels", config.conv6_channels >= 0, ">= 0 (0: no sixth layer)"),
        ("channels", len(config.channels) in (0, 5) and all(c >= 1 for c in config.channels),
         "five positive kernel counts, conv1..conv5 (or none)"),
        ("input_scale", config.input_scale > 0, "positive"),
        ("shuffle_window_images", config.shuffle_window_images >= 0, ">= 0 (0: a full shuffle)"),
        ("plateau_patience_epochs", config.plateau_patience_epochs >= 1, "at least 1"),
        ("plateau_threshold", config.plateau_threshold >= 0, ">= 0"),
        ("max_lr_reductions", config.max_lr_reductions >= 0, ">= 0"),
        ("milestones_epochs", all(m >= 1 for m in config.milestones_epochs), "epochs >= 1"),
        ("lr_factor", 0 < config.lr_factor < 1, "in (0, 1)"),
        ("loader_workers", config.loader_workers >= -1, ">= 0, or -1 (auto)"),
        ("cpu_threads", config.cpu_threads >= 0, ">= 0 (0: torch's default)"),
        ("checkpoint_every_steps", config.checkpoint_every_steps >= 0, ">= 0 (0: only at epoch ends)"),
        ("max_steps_per_epoch", config.max_steps_per_epoch >= 0, ">= 0 (0: the whole training set)"),
        ("nonfinite_check_every_steps", config.nonfinite_check_every_steps >= 0, ">= 0 (0: the device's default)"),
        ("collective_timeout_minutes", 0 <= config.collective_timeout_minutes < 1e6, ">= 0 (0: torch's default)"),
    ]
    for name, ok, rule in ranges:
        if not ok:
            raise UserError(f"{name} must be {rule}; got {getattr(config, name)!r}")


LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# Keys that shape only the paper's network: torchvision's layout (arch "torchvision") has fixed
# widths, one tower, no LRN, ReLU and max-pool 3/2, so a run of it refuses them off their defaults.
PAPER_NETWORK_KEYS = ("towers", "lrn", "lrn_convention", "lrn_before_relu", "cnorm2", "overlapping_pool",
                      "activation", "width", "stem", "channels", "fc_units", "conv6_channels", "tower_parallel")
# conv1 11x11 stride 4 padding 2 and three max-pools 3/2 leave 1x1 from 63 px (alexnet/torchvision_alexnet.py).
TORCHVISION_MIN_CROP = 63


def _refuse_paper_network_keys(config: TrainConfig) -> None:
    """One line naming the keys of :data:`PAPER_NETWORK_KEYS` that ``config`` moved off their defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    changed = [name for name in PAPER_NETWORK_KEYS if getattr(config, name) != defaults[name]]
    if changed:
        by_recipe = [name for name in changed if name in ORIGINAL_RECIPE and config.recipe == "original"]
        hint = f" (recipe 'original' sets {', '.join(by_recipe)}: give their defaults, or --recipe paper)" if by_recipe else ""
        raise UserError(f"arch 'torchvision' is torchvision's fixed one-tower layout, and "
                        f"{', '.join(f'{n} {getattr(config, n)!r}' for n in changed)} apply only to the "
                        f"paper's network{hint}; leave them at their defaults, or drop --arch torchvision")


# The training step's faster kernels (alexnet/speed/levers.py); "all" names the first three.
STEP_KERNELS = ("conv1-s2d", "fused-blocks", "fused-sgd", "bf16-weights", "grouped-halves", "grouped-block-diagonal")
ALL_STEP_KERNELS = STEP_KERNELS[:3]  # bf16-weights (bf16 runs only) is asked for by name


def _expand_step_kernels(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` with "all" expanded, in :data:`STEP_KERNELS` order ("none": none, as on a resume
    that turns them off), or a UserError."""
    if names == ("none",):
        return ()
    if "none" in names:
        raise UserError(f"step_kernels: 'none' turns every kernel off, so it goes alone; got {','.join(names)}")
    unknown = [n for n in names if n not in STEP_KERNELS + ("all",)]
    if unknown:
        raise UserError(f"step_kernels: no kernel {', '.join(map(repr, unknown))}; choose from "
                        f"{', '.join(STEP_KERNELS)}, all or none")
    wanted = set(names) | (set(ALL_STEP_KERNELS) if "all" in names else set())
    if {"grouped-halves", "grouped-block-diagonal"} <= wanted:
        raise UserError("step_kernels: grouped-halves and grouped-block-diagonal are two ways to run the same "
                        "convolutions; choose one")
    return tuple(n for n in STEP_KERNELS if n in wanted)

# The authors' released recipe, by the file each value comes from. The run's log at the end of
# layer-params-145.cfg is read with "epoch N: set ..." as the end of epoch N (the change holds from
# epoch N + 1) and "epoch 91: killed" as a run of 91 epochs: the weights' lr divided after epochs 25,
# 51 and 79 (counted from the start, as every milestone), conv1's weights at a tenth of it after 67
# and frozen after 72, colour noise off after 67 (counted back from the end: the last 24, 19 and 24
# epochs, so a run of another length ends as the released one did). Dropout, the colour scale and
# fc8's bias are the defaults already; they are named so that the recipe reads the same over any base.
ORIGINAL_RECIPE = dict(
    # layers-145.cfg: conv1's LRN on its output before the ReLU, cnorm2, initW 0.03 in conv3-5, no initB in fc1000
    lrn_before_relu=True,
    cnorm2=True,
    init="original",
    fc8_bias_zero=True,
    dropout_style="paper",  # its hs layers (keep 0.5): unscaled while training
    # layer-params-145.cfg: the LRN constants, epsB 0.02 fixed with wball 0, and the run's log
    lrn_convention="cuda-convnet",
    param_groups="cuda-convnet",
    epochs=91,
    schedule="milestones",
    milestones_epochs=(25, 51, 79),
    conv1_lr_tenth_last_epochs=24,
    freeze_conv1_last_epochs=19,
    lighting_off_last_epochs=24,
    # convdata.py: the input
    pca_scale="sqrt",
    lighting_shrink=True,
    mean_centre_patch=True,
    crop_chunk_images=32,
)

# Every key of the recipe as it was saved before dropout_style existed; a saved recipe with all of
# them and without dropout_style is of that version (see upgrade_saved).
_SAVED_V1_KEYS = frozenset((
    "towers", "lrn", "lrn_convention", "lrn_before_relu", "overlapping_pool", "activation", "dropout", "width",
    "stem", "init", "crop_size", "random_crop", "flip", "pca_lighting_std", "subtract_mean", "input_scale",
    "epochs", "batch_size_per_device", "lr", "momentum", "weight_decay", "param_groups", "schedule",
    "plateau_patience_epochs", "plateau_threshold", "max_lr_reductions", "milestones_epochs", "lr_factor", "seed"))


# Keys saved since fc8's bias starts at 0 and the paper's biases go undecayed; a saved recipe (one
# with every key of _SAVED_V1_KEYS) without them is older, and these values keep its meaning.
_SAVED_V2_READING = dict(conv1_lr_tenth_last_epochs=0, mean_centre_patch=False, crop_chunk_images=1)


def upgrade_saved(values: dict) -> dict:
    """A saved recipe of an earlier version, with the keys that keep its meaning; any other dict
    (a recipe of this version, or a file that names some keys) is returned as it is.

    Saved before ``dropout_style`` existed: inverted dropout, the ``"fb"`` colour scale, and
    ``"caffe"`` LRN (then alpha / n with k = 2) as ``"cuda-convnet"``. Saved before the keys of
    ``_SAVED_V2_READING`` existed: fc8's bias of 1 unless ``fc8_bias_zero`` says otherwise,
    ``param_groups "paper"`` (then every parameter decayed) as ``"uniform"``, and those keys off,
    so that ``recipe "original"`` does not set them."""
    if not _SAVED_V1_KEYS <= set(values) or any(key in values for key in _SAVED_V2_READING):
        return values
    if "dropout_style" not in values:
        values = dict(upgrade_network(values), pca_scale="fb")
    groups = "uniform" if values["param_groups"] == "paper" else values["param_groups"]
    return {"fc8_bias_zero": False, **values, **_SAVED_V2_READING, "param_groups": groups}


def upgrade_network(values: dict) -> dict:
    """Network arguments saved before ``dropout_style`` existed (a recipe's, or a checkpoint's
    ``model_args``), with the keys that keep their meaning: inverted dropout, and ``"caffe"`` LRN
    (then alpha / n with k = 2) as ``"cuda-convnet"``. Those that name ``dropout_style`` are
    returned as they are."""
    if "dropout_style" in values:
        return values
    values = dict(values, dropout_style="inverted")
    if values.get("lrn_convention") == "caffe":
        values["lrn_convention"] = "cuda-convnet"
    return values


# Keys of how a run executes rather than what it learns: a resume may change them, and a report
# shows them without highlighting them as departures from the paper.
RUNTIME_KEYS = ("device", "precision", "channels_last", "compile", "compile_mode", "step_kernels", "cuda_graph",
                "loader_workers",
                "cpu_threads", "checkpoint_every_steps", "on_nonfinite", "nonfinite_check_every_steps", "collective_timeout_minutes",
                "deterministic",
                "tower_parallel", "tensorboard")


def _check_types(config: "TrainConfig") -> None:
    """Each key of the type its field names, for configs built in code (``TrainConfig(epochs="2")``);
    whole numbers in float keys become floats, lists in list keys tuples (files and flags go
    through :func:`_coerce`, which reads strings)."""
    hints = _hints()
    for f in fields(config):
        base, item = _base_type(hints[f.name])
        value = getattr(config, f.name)
        if base is tuple and isinstance(value, list):
            value = tuple(value)
        values = value if base is tuple and isinstance(value, tuple) else (value,)
        want = item if base is tuple else base
        ok = (base is not tuple or isinstance(value, tuple)) and all(_of_type(v, want) for v in values)
        if not ok:
            raise UserError(f"config key {f.name!r} wants {_wanted(base, item)}, got {value!r}")
        if want is float and base is not tuple:
            value = float(value)
        elif want is bool:
            value = bool(value)
        elif want is int:
            value = tuple(int(v) for v in value) if base is tuple else int(value)
        object.__setattr__(config, f.name, value)


def _of_type(value, base) -> bool:
    if base is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False  # True is not the number 1
    if base is int:
        return isinstance(value, numbers.Integral)
    if base is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, base)


@functools.cache
def _hints() -> dict:
    return typing.get_type_hints(TrainConfig)


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is tuple:
        return tuple, typing.get_args(tp)[0]
    return tp, None


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _scalar(base, value):
    """``value`` as ``base`` (bool, int, float or str), or ValueError; nothing is rounded or stringified."""
    if isinstance(value, bool) and base is not bool:
        raise ValueError  # JSON true is not the number 1
    if base is str:
        if not isinstance(value, str):  # 5 or ["x"] in a file is not the name "5" or "['x']"
            raise ValueError
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, (str, int)) and str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if not isinstance(value, (str, int, float)):  # a list, a table, a TOML date, null
        raise ValueError
    if base is int and isinstance(value, float) and not value.is_integer():
        raise ValueError  # 1.5 kernels is not 1
    result = base(value)
    if base is float and not math.isfinite(result):
        raise ValueError
    return result


def _wanted(base, item) -> str:
    """What a key of type ``base`` (of ``item`` for lists) takes, in words."""
    plural = {int: "integers", float: "numbers", str: "strings"}
    return f"a list of {plural.get(item, item)}" if base is tuple else _TYPE_NAMES.get(base, base)


def _coerce(name: str, tp, value):
    base, item = _base_type(tp)
    want = _wanted(base, item)
    try:
        if base is tuple:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            # "48,128" or ["48", "128"] or ["48,128"]; an empty item ("conv1,,fc8") is a mistake, not nothing
            if any(isinstance(part, str) and any(not x.strip() for x in part.split(",")) for part in value):
                raise ValueError
            value = [v for part in value for v in (part.replace(",", " ").split() if isinstance(part, str) else [part])]
            return tuple(_scalar(item, v) for v in value)
        return _scalar(base, value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config key {name!r} wants {want}, got {value!r}") from None


def from_dict(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A config from ``values`` over ``base`` (the paper's recipe); unknown keys are errors.

    ``recipe: "original"`` in ``values`` sets :data:`ORIGINAL_RECIPE`'s keys that ``values`` does
    not give itself; a saved recipe of an earlier version is read as it was (:func:`upgrade_saved`)."""
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown config key(s): {', '.join(unknown)}; see 'alexnet train --help' for the keys")
    hints = _hints()
    coerced = {k: _coerce(k, hints[k], v) for k, v in upgrade_saved(values).items()}
    if coerced.get("recipe") == "original":
        coerced = {**ORIGINAL_RECIPE, **coerced}  # the keys given win over the recipe's
    return dataclasses.replace(base or TrainConfig(), **coerced)


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as a dict; KeyError naming a key given twice."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise KeyError(key)
        seen[key] = value
    return seen


def load_file(path: str | Path) -> dict:
    """Read a JSON or TOML config file into a dict (a saved run's config.json works too)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; give a JSON or TOML recipe file (a run's config.json works)")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text file (JSON or TOML); give a recipe file") from None
    if path.suffix == ".toml":
        if tomllib is None:
            raise UserError(f"config file {path}: TOML needs Python 3.11 or later; use a JSON file")
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"config file {path} is not valid TOML: {e}") from None
    else:
        try:
            values = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        except json.JSONDecodeError as e:
            raise UserError(f"config file {path} is not valid JSON: {e}") from None
        except KeyError as e:  # JSON itself takes the last of two values silently
            raise UserError(f"config file {path} gives {e.args[0]!r} twice; keep one") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a table of recipe keys, not a {type(values).__name__}")
    return values


def key_type(name: str) -> type:
    """How key ``name`` is written on a command line: bool (a switch), tuple (a list), or the
    scalar's type (int, float, str); the words are converted and checked by :func:`from_args`."""
    return _base_type(_hints()[name])[0]


def from_args(args: argparse.Namespace, base: TrainConfig | None = None, fitted: dict | None = None) -> TrainConfig:
    """The config: ``base``, then the keys of ``fitted`` (a recipe fitted to the data, e.g. the
    small-data one), then the ``--config`` file if given, then the flags given.

    A ``recipe`` named by the file or the flags fills only the keys that neither gives; an
    ``init_from`` checkpoint is recorded as an absolute path."""
    config = base or TrainConfig()
    values = upgrade_saved(load_file(args.config)) if getattr(args, "config", None) else {}
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = from_dict({**(fitted or {}), **values, **given}, config)
    if config.init_from:
        config = config.replace(init_from=str(Path(config.init_from).expanduser().resolve()))
    return config
