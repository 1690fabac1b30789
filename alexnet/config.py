"""The training recipe as one frozen dataclass whose defaults are the paper's.

Every field is a command-line flag of ``alexnet train`` (``batch_size_per_device`` becomes
``--batch-size-per-device``) and a key of a config file (JSON or TOML). Unknown keys are errors.
The resolved config is saved as ``config.json`` in every run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

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
    towers: int = _f(2, "columns of the network: 2 (the paper's two GPUs, grouped convolutions) or 1", (1, 2))
    lrn: bool = _f(True, "local response normalisation after conv1 and conv2 (section 3.3)")
    lrn_convention: str = _f("paper", "LRN alpha as written ('paper') or divided by n ('caffe')", ("paper", "caffe"))
    lrn_before_relu: bool = _f(False, "conv1's LRN before its ReLU, as the original code")
    overlapping_pool: bool = _f(True, "max-pool 3/2 (section 3.4) instead of 2/2")
    activation: str = _f("relu", "nonlinearity after every learnable layer but fc8", ("relu", "tanh"))
    dropout: float = _f(0.5, "dropout probability on fc6 and fc7 outputs (section 4.2); 0 turns it off")
    width: float = _f(1.0, "multiplier on every layer's kernels and units (1 = the paper)")
    stem: str = _f("paper", "conv1: 'paper' (11x11 stride 4) or 'small' (3x3 stride 1, for 28-64 px images)", ("paper", "small"))
    init: str = _f("paper", "weights N(0,0.01) and biases 1/0 ('paper'), std 0.03 in conv3-5 ('original'), or fan-in scaled ('he')", ("paper", "original", "he"))

    # --- data and augmentation (sections 2 and 4.1) ---
    crop_size: int = _f(224, "side of the square crops fed to the network, in pixels (paper: 224 of 256)")
    random_crop: bool = _f(True, "random crops at training time (otherwise the centre crop)")
    flip: bool = _f(True, "horizontal reflections with probability 0.5 at training time")
    pca_lighting_std: float = _f(0.1, "std of the PCA colour noise alphas (section 4.1); 0 turns it off")
    subtract_mean: bool = _f(True, "subtract the per-pixel mean image of the training set (section 2)")
    input_scale: float = _f(1.0, "multiply centred pixels by this (paper: 1, raw 0-255 values)")

    # --- learning (section 5) ---
    epochs: int = _f(90, "passes over the training set")
    batch_size_per_device: int = _f(128, "images per process per step; global batch = replicas x this (replicas = processes, or processes / 2 with --tower-parallel)")
    lr: float = _f(0.01, "initial learning rate eps of the update rule (paper: 0.01 at global batch 128)")
    momentum: float = _f(0.9, "momentum of the update rule")
    weight_decay: float = _f(5e-4, "weight decay of the update rule")
    param_groups: str = _f("paper", "'paper': one lr for all; 'original': biases at 2x lr, no decay", ("paper", "original"))
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
    loader_workers: int = _f(4, "threads that read and batch images from the prepared store")
    cpu_threads: int = _f(0, "CPU threads for torch and the C kernels (0: torch's default, one per core); "
                             "on a machine where other work holds cores, fewer threads run faster")
    checkpoint_every_steps: int = _f(0, "also checkpoint every N steps inside an epoch (0: only at epoch ends)")
    max_steps_per_epoch: int = _f(0, "stop each epoch after N steps (0: the whole training set)")
    on_nonfinite: str = _f("stop", "on a NaN/inf loss or gradient: 'stop' (keep the last good checkpoint) or 'skip' the step", ("stop", "skip"))
    deterministic: bool = _f(False, "deterministic kernels (bitwise-repeatable runs, slower)")
    tower_parallel: bool = _f(False, "put the two towers on two ranks (section 3.2) instead of grouped convolutions")

    def __post_init__(self) -> None:
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
            ("input_scale", self.input_scale > 0, "positive"),
            ("plateau_patience_epochs", self.plateau_patience_epochs >= 1, "at least 1"),
            ("plateau_threshold", self.plateau_threshold >= 0, ">= 0"),
            ("max_lr_reductions", self.max_lr_reductions >= 0, ">= 0"),
            ("milestones_epochs", all(m >= 1 for m in self.milestones_epochs), "epochs >= 1"),
            ("lr_factor", 0 < self.lr_factor < 1, "in (0, 1)"),
            ("loader_workers", self.loader_workers >= 0, ">= 0"),
            ("cpu_threads", self.cpu_threads >= 0, ">= 0 (0: torch's default)"),
            ("checkpoint_every_steps", self.checkpoint_every_steps >= 0, ">= 0 (0: only at epoch ends)"),
            ("max_steps_per_epoch", self.max_steps_per_epoch >= 0, ">= 0 (0: the whole training set)"),
        ]
        for name, ok, rule in ranges:
            if not ok:
                raise UserError(f"{name} must be {rule}; got {getattr(self, name)!r}")
        if self.tower_parallel and self.towers != 2:
            raise UserError(f"tower_parallel needs towers=2; got towers={self.towers}")
        if feature_map_size(self.crop_size, self.stem, self.overlapping_pool) < 1:
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


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is tuple:
        return tuple, typing.get_args(tp)[0]
    return tp, None


def _coerce(name: str, tp, value):
    base, item = _base_type(tp)
    try:
        if isinstance(value, bool) and base is not bool:
            raise ValueError  # JSON true is not the number 1
        if base is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            return tuple(item(v) for v in value)
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        result = base(value)
        if base is float and not math.isfinite(result):
            raise ValueError
        return result
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config key {name!r} wants a {getattr(base, '__name__', base)}, got {value!r}") from None


def from_dict(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A config from ``values`` over ``base`` (the paper's recipe); unknown keys are errors."""
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown config key(s): {', '.join(unknown)}; see 'alexnet train --help' for the keys")
    hints = typing.get_type_hints(TrainConfig)
    coerced = {k: _coerce(k, hints[k], v) for k, v in values.items()}
    return dataclasses.replace(base or TrainConfig(), **coerced)


def load_file(path: str | Path) -> dict:
    """Read a JSON or TOML config file into a dict (a saved run's config.json works too)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text()
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
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("recipe (defaults: the paper's)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        help_ = f"{f.metadata['help']} (default: {f.default})"
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif base is tuple:
            group.add_argument(flag, dest=f.name, nargs="+", default=None, help=help_)
        else:
            group.add_argument(
                flag, dest=f.name, type=str, default=None, choices=f.metadata.get("choices") and [str(c) for c in f.metadata["choices"]], help=help_
            )


def from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The config: ``base``, then the ``--config`` file if given, then the flags given."""
    config = base or TrainConfig()
    if getattr(args, "config", None):
        config = from_dict(load_file(args.config), config)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return from_dict(given, config)
