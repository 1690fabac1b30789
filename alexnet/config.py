"""The training recipe as one frozen dataclass whose defaults are the paper's.

Every field is a command-line flag of ``alexnet train`` (``batch_size_per_device`` becomes
``--batch-size-per-device``) and a key of a config file (JSON or TOML). Unknown keys are errors.
The resolved config is saved as ``config.json`` in every run directory.

``recipe = "original"`` (``--recipe original``) is a shorthand for the authors' released recipe
(:data:`ORIGINAL_RECIPE`, from layers-145.cfg / layer-params-145.cfg / convdata.py and the run's
log): it sets each of those keys unless the same flags or file name the key themselves; the keys
given win. The resolved values, not the shorthand, are what a run uses and saves.

Configs saved before ``dropout_style`` existed (a ``config.json`` or a checkpoint's recipe: every
key of that version, none of the new ones) are read as the runs they were: inverted dropout, the
colour noise's ``"fb"`` scale, and ``lrn_convention "caffe"`` (which then meant alpha / n with
k = 2) as ``"cuda-convnet"`` (:func:`upgrade_saved`).
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
from alexnet.model import feature_map_size

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON config files only
    tomllib = None


def _f(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata=dict(help=help, choices=choices))


@dataclass(frozen=True)
class TrainConfig:
    # --- the network (section 3) ---
    arch: str = _f("alexnet", "the network: the paper's ('alexnet'), or torchvision's single-tower layout "
                              "('torchvision', for fine-tuning its imported weights; its dropout is its own inverted "
                              "dropout on the inputs of fc6 and fc7, so dropout_style does not apply)",
                   ("alexnet", "torchvision"))
    towers: int = _f(2, "columns of the network: 2 (the paper's two GPUs, grouped convolutions) or 1", (1, 2))
    lrn: bool = _f(True, "local response normalisation after conv1 and conv2 (section 3.3)")
    recipe: str = _f("paper", "'original': the authors' released recipe, every element of which is also its own "
                              "key (flags given win); see the README", ("paper", "original"))
    lrn_convention: str = _f("paper", "LRN: alpha as written, k=2 ('paper'); alpha/n, k=2 (the released code, "
                                      "'cuda-convnet'); alpha/n, k=1 (Caffe's bvlc_alexnet, 'caffe')",
                             ("paper", "cuda-convnet", "caffe"))
    lrn_before_relu: bool = _f(False, "conv1's LRN before its ReLU, as the original code")
    cnorm2: bool = _f(False, "the released code's within-map 5x5 normalisation after conv2's LRN "
                             "(scale 0.001/25, power 0.75, k=1; not in the paper)")
    overlapping_pool: bool = _f(True, "max-pool 3/2 (section 3.4) instead of 2/2")
    activation: str = _f("relu", "nonlinearity after every learnable layer but fc8", ("relu", "tanh"))
    dropout: float = _f(0.5, "dropout probability on fc6 and fc7 outputs (section 4.2); 0 turns it off")
    dropout_style: str = _f("paper", "'paper': unscaled while training, outputs x (1-p) at test time (section 4.2); "
                                     "'inverted': kept outputs x 1/(1-p) while training", ("paper", "inverted"))
    width: float = _f(1.0, "multiplier on every layer's kernels and units (1 = the paper)")
    channels: tuple[int, ...] = _f((), "kernels of conv1..conv5, e.g. 48,128,192,192,256 with --towers 1 (the one-GPU "
                                       "baseline of section 3.2); replaces --width for them; empty: the paper's x width")
    fc_units: int = _f(0, "units of fc6 and fc7; replaces --width for them (0: 4096 x width)")
    conv6_channels: int = _f(0, "kernels of a sixth convolutional layer over the last pooling layer "
                                "(section 6; 256 in the released config); 0: none")
    stem: str = _f("paper", "conv1: 'paper' (11x11 stride 4) or 'small' (3x3 stride 1, for 28-64 px images)", ("paper", "small"))
    init: str = _f("paper", "weights N(0,0.01) and biases 1/0 ('paper'), std 0.03 in conv3-5 ('original'), or fan-in scaled ('he')", ("paper", "original", "he"))
    fc8_bias_zero: bool = _f(False, "fc8's bias starts at 0 (the released configs) instead of the init's value")
    init_from: str = _f("", "fine-tune: load every layer that fits from this checkpoint (fc8 is drawn afresh), "
                            "with a new optimizer and schedule; not a resume")
    freeze: tuple[str, ...] = _f((), "layers never updated, e.g. conv1,conv2 (with --init-from)")

    # --- data and augmentation (sections 2 and 4.1) ---
    crop_size: int = _f(224, "side of the square crops fed to the network, in pixels (paper: 224 of 256)")
    random_crop: bool = _f(True, "random crops at training time (otherwise the centre crop)")
    flip: bool = _f(True, "horizontal reflections with probability 0.5 at training time")
    pca_lighting_std: float = _f(0.1, "std of the PCA colour noise alphas (section 4.1); 0 turns it off")
    pca_scale: str = _f("sqrt", "colour shift P(alpha*sqrt(lambda)) in 0-255 units (the authors' code, 'sqrt') or "
                                "P(alpha*lambda/255) (fb.resnet.torch, 'fb')", ("sqrt", "fb"))
    lighting_shrink: bool = _f(False, "divide the centred training input by 1 + pca_lighting_std (1.1) while colour "
                                      "noise is on, as the released code")
    lighting_off_last_epochs: int = _f(0, "no colour noise in the last N epochs (released recipe: 24)")
    subtract_mean: bool = _f(True, "subtract the per-pixel mean image of the training set (section 2)")
    mean_image: str = _f("store", "the mean image subtracted: the prepared data set's ('store', section 2), or the "
                         "--init-from parent's ('parent': a fine-tuned network keeps its parent's preprocessing, e.g. "
                         "torchvision's channel means, so that export --format torchvision is a drop-in)",
                         choices=("store", "parent"))
    input_scale: float = _f(1.0, "multiply centred pixels by this (paper: 1, raw 0-255 values)")
    shuffle_window_images: int = _f(0, "0: a full shuffle of the training set every epoch (the paper's SGD); N: "
                                       "blocks of 64 consecutive images shuffled, then images within windows of N, so "
                                       "a store larger than memory is read in long runs")

    # --- learning (section 5) ---
    epochs: int = _f(90, "passes over the training set")
    batch_size_per_device: int = _f(128, "images per process per step; global batch = replicas x this (replicas = processes, or processes / 2 with --tower-parallel)")
    lr: float = _f(0.01, "initial learning rate eps of the update rule (paper: 0.01 at global batch 128)")
    momentum: float = _f(0.9, "momentum of the update rule")
    weight_decay: float = _f(5e-4, "weight decay of the update rule")
    param_groups: str = _f("paper", "'paper': one lr for all; 'cuda-convnet': biases at 2x the initial lr held fixed "
                                    "while the weights' falls, no decay (the released configs); 'caffe': biases at 2x "
                                    "the lr through every reduction, no decay ('original' is its old name)",
                           ("paper", "cuda-convnet", "caffe", "original"))
    freeze_conv1_last_epochs: int = _f(0, "conv1 not updated in the last N epochs (released recipe: 19)")
    schedule: str = _f("plateau", "divide lr by 10 on a validation plateau, or at fixed epochs", ("plateau", "milestones"))
    plateau_patience_epochs: int = _f(5, "epochs without improvement before the lr is divided")
    plateau_threshold: float = _f(1e-3, "improvement in validation error (absolute) that counts")
    max_lr_reductions: int = _f(3, "the plateau schedule divides the lr at most this many times")
    milestones_epochs: tuple[int, ...] = _f((30, 60, 80), "epochs after which the milestone schedule divides the lr")
    lr_factor: float = _f(0.1, "multiply the lr by this at each reduction")

    # --- the run ---
    seed: int = _f(0, "seed for init, data order, dropout and augmentation")
    device: str = _f("auto", "'auto' (cuda if available), 'cpu', 'cuda', or 'cuda:N'")
    precision: str = _f("auto", "'auto' (bf16 autocast on CUDA, fp32 on CPU), 'fp32' or 'bf16'", ("auto", "fp32", "bf16"))
    channels_last: str = _f("auto", "channels_last memory format: 'auto' (on CUDA), 'on' or 'off'", ("auto", "on", "off"))
    compile: bool = _f(False, "torch.compile the training step")
    compile_mode: str = _f("default", "torch.compile's mode with --compile: 'reduce-overhead' replays the step's "
                                      "kernels as CUDA graphs, 'max-autotune' also searches kernel configurations",
                           ("default", "reduce-overhead", "max-autotune"))
    step_kernels: tuple[str, ...] = _f((), "faster kernels for the training step, the same sums in another order: "
                                           "conv1-s2d, fused-blocks, fused-sgd, bf16-weights, grouped-halves, "
                                           "grouped-block-diagonal, all, or none (see the README)")
    cuda_graph: bool = _f(False, "replay the whole training step (forward, backward, update) as one CUDA graph, "
                                 "captured afresh each epoch after 3 eager steps: one process on a CUDA GPU")
    loader_workers: int = _f(-1, "threads that read (and, for a JPEG store, decode) batches from the prepared store; "
                                 "0: in the training thread; -1: 4, or for a JPEG store on a GPU every core of this "
                                 "process's share but one")
    cpu_threads: int = _f(0, "CPU threads for torch and the C kernels (0: torch's default, one per core); "
                             "on a machine where other work holds cores, fewer threads run faster")
    checkpoint_every_steps: int = _f(0, "also checkpoint every N steps inside an epoch (0: only at epoch ends)")
    max_steps_per_epoch: int = _f(0, "stop each epoch after N steps (0: the whole training set)")
    on_nonfinite: str = _f("stop", "on a NaN/inf loss or gradient: 'stop' (keep the last good checkpoint) or 'skip' the step", ("stop", "skip"))
    nonfinite_check_every_steps: int = _f(0, "read the non-finite flag and the loss on the host every N steps "
                                             "(0: 1 on the CPU or with skip, 20 on a GPU, where each read waits for it)")
    collective_timeout_minutes: float = _f(0.0, "with several processes: how long one waits for the others at a "
                                                "reduction before it stops with a line (0: torch's default, 30 "
                                                "minutes on CPUs, 10 on GPUs); keep it above the slowest "
                                                "checkpoint write and validation")
    deterministic: bool = _f(False, "deterministic kernels (bitwise-repeatable runs, slower)")
    tower_parallel: bool = _f(False, "put the two towers on two ranks (section 3.2) instead of grouped convolutions")
    tensorboard: bool = _f(False, "also write the metrics and conv1's kernels for TensorBoard into RUN/tensorboard "
                                  "(needs the 'tensorboard' extra)")

    def __post_init__(self) -> None:
        _check_types(self)
        for field_ in fields(self):
            choices = field_.metadata.get("choices")
            value = getattr(self, field_.name)
            if choices is not None and value not in choices:
                raise UserError(f"{field_.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
        ranges = [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size_per_device", self.batch_size_per_device >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("width", self.width > 0, "positive"),
            ("pca_lighting_std", self.pca_lighting_std >= 0, ">= 0"),
            ("lighting_off_last_epochs", self.lighting_off_last_epochs >= 0, ">= 0"),
            ("freeze_conv1_last_epochs", self.freeze_conv1_last_epochs >= 0, ">= 0"),
            ("fc_units", self.fc_units >= 0, ">= 0 (0: 4096 x width)"),
            ("conv6_channels", self.conv6_channels >= 0, ">= 0 (0: no sixth layer)"),
            ("channels", len(self.channels) in (0, 5) and all(c >= 1 for c in self.channels),
             "five positive kernel counts, conv1..conv5 (or none)"),
            ("input_scale", self.input_scale > 0, "positive"),
            ("shuffle_window_images", self.shuffle_window_images >= 0, ">= 0 (0: a full shuffle)"),
            ("plateau_patience_epochs", self.plateau_patience_epochs >= 1, "at least 1"),
            ("plateau_threshold", self.plateau_threshold >= 0, ">= 0"),
            ("max_lr_reductions", self.max_lr_reductions >= 0, ">= 0"),
            ("milestones_epochs", all(m >= 1 for m in self.milestones_epochs), "epochs >= 1"),
            ("lr_factor", 0 < self.lr_factor < 1, "in (0, 1)"),
            ("loader_workers", self.loader_workers >= -1, ">= 0, or -1 (auto)"),
            ("cpu_threads", self.cpu_threads >= 0, ">= 0 (0: torch's default)"),
            ("checkpoint_every_steps", self.checkpoint_every_steps >= 0, ">= 0 (0: only at epoch ends)"),
            ("max_steps_per_epoch", self.max_steps_per_epoch >= 0, ">= 0 (0: the whole training set)"),
            ("nonfinite_check_every_steps", self.nonfinite_check_every_steps >= 0, ">= 0 (0: the device's default)"),
            ("collective_timeout_minutes", 0 <= self.collective_timeout_minutes < 1e6, ">= 0 (0: torch's default)"),
        ]
        for name, ok, rule in ranges:
            if not ok:
                raise UserError(f"{name} must be {rule}; got {getattr(self, name)!r}")
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
        if any(c % self.towers for c in self.channels):
            raise UserError(f"channels {','.join(map(str, self.channels))} must each divide into {self.towers} towers")
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


# The training step's faster kernels (alexnet/training/step_kernels.py); "all" names the first three.
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

# The authors' released recipe (layers-145.cfg, layer-params-145.cfg, convdata.py; the run's log in
# layer-params-145.cfg: colour noise set to 0 at epoch 67 and conv1's rate to 0 at epoch 72 of a run
# stopped at epoch 91, i.e. the last 24 and 19 epochs). Dropout and the colour scale are the
# defaults already; they are named so that the recipe reads the same over any base.
ORIGINAL_RECIPE = dict(
    lrn_convention="cuda-convnet",
    lrn_before_relu=True,
    cnorm2=True,
    init="original",
    fc8_bias_zero=True,
    param_groups="cuda-convnet",
    dropout_style="paper",
    pca_scale="sqrt",
    lighting_shrink=True,
    lighting_off_last_epochs=24,
    freeze_conv1_last_epochs=19,
)

# Every key of the recipe as it was saved before dropout_style existed; a saved recipe with all of
# them and without dropout_style is of that version (see upgrade_saved).
_SAVED_V1_KEYS = frozenset((
    "towers", "lrn", "lrn_convention", "lrn_before_relu", "overlapping_pool", "activation", "dropout", "width",
    "stem", "init", "crop_size", "random_crop", "flip", "pca_lighting_std", "subtract_mean", "input_scale",
    "epochs", "batch_size_per_device", "lr", "momentum", "weight_decay", "param_groups", "schedule",
    "plateau_patience_epochs", "plateau_threshold", "max_lr_reductions", "milestones_epochs", "lr_factor", "seed"))


def upgrade_saved(values: dict) -> dict:
    """A recipe saved before ``dropout_style`` existed, with the keys that keep its meaning:
    inverted dropout, the ``"fb"`` colour scale, and ``"caffe"`` LRN (then alpha / n with k = 2)
    as ``"cuda-convnet"``. Any other dict is returned as it is."""
    if "dropout_style" in values or not _SAVED_V1_KEYS <= set(values):
        return values
    values = dict(values, dropout_style="inverted", pca_scale="fb")
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
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a table of recipe keys, not a {type(values).__name__}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field; the defaults stay None so that only given flags override."""
    from alexnet.commands import CommaList

    hints = _hints()
    group = parser.add_argument_group("recipe (defaults: the paper's)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        help_ = f"{f.metadata['help']} (default: {f.default})"
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif base is tuple:  # one word, items joined by commas; the config checks the items
            group.add_argument(flag, dest=f.name, action=CommaList, default=None, metavar="A,B,...", help=help_)
        else:
            group.add_argument(
                flag, dest=f.name, type=str, default=None, choices=f.metadata.get("choices") and [str(c) for c in f.metadata["choices"]], help=help_
            )


def from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The config: ``base``, then the ``--config`` file if given, then the flags given.

    A ``recipe`` named by the file or the flags fills only the keys that neither gives; an
    ``init_from`` checkpoint is recorded as an absolute path."""
    config = base or TrainConfig()
    values = load_file(args.config) if getattr(args, "config", None) else {}
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = from_dict({**values, **given}, config)
    if config.init_from:
        config = config.replace(init_from=str(Path(config.init_from).expanduser().resolve()))
    return config
