"""Checkpoints: written atomically, read without executing code.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``: a pickle that carries code is refused. It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one
(:mod:`alexnet.atomic`), so a crash at any moment leaves either the previous checkpoint or the
new one, never half of one.

Reading checks before it trusts (:func:`load`, :func:`validate`): a file that is an image, a text
or a bare pickle is named for what it is; a zip archive whose members would inflate is refused
unread; after ``torch.load`` the model arguments must be known to the architecture's constructor
and within sane ranges, and the weights must be exactly the tensors those arguments make (shapes
compared on the meta device, so a crafted file cannot make us allocate more than it holds) and
finite; the data description and recipe must agree with the network.

Contents (``FORMAT`` marks the file as ours):
    format, version
    model_args        keyword arguments of alexnet.model.build_model (architecture and class count)
    data              classes, image_size, channels, mean_image (uint8-derived float tensor)
    config            the resolved TrainConfig as a dict
    model             the single-device (grouped) state dict
    optimizer, schedule, rng, progress   (for resuming; absent from exported weights)
"""

from __future__ import annotations

import errno
import io
import math
import pickle
from pathlib import Path
from typing import Any

import torch

from alexnet.atomic import atomic_write_bytes
from alexnet.errors import UserError

FORMAT = "alexnet-checkpoint"
VERSION = 1


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Save a checkpoint atomically; ``payload`` must hold only tensors and plain values.

    A tensor that is a view of a larger storage (the one-pass PaperSGD keeps weights and
    velocities as views of flat buffers) is saved as a copy of its own elements, so that every
    tensor of a checkpoint stands alone, whoever reads it."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **_standalone(payload)}, buffer)
    kept = "the previous checkpoint is kept" if Path(path).is_file() else "none was written before"
    try:
        atomic_write_bytes(path, buffer.getvalue(), fault_point="checkpoint-write")
    except OSError as e:
        size = f" ({buffer.tell() / 2**20:.1f} MiB)" if e.errno == errno.ENOSPC else ""
        raise UserError(f"could not write checkpoint {path}{size}: {e.strerror or e}; {kept}") from None


def _standalone(value):
    """``value`` with every tensor that does not own its whole storage replaced by a compact copy."""
    if isinstance(value, torch.Tensor):
        whole = value.untyped_storage().nbytes() == value.numel() * value.element_size()
        return value if whole and value.is_contiguous() else value.clone(memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        copy = value.copy()
        for key, item in value.items():
            copy[key] = _standalone(item)
        return copy
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_standalone(v) for v in value)
    return value


# What the first bytes of a file say it is, for files that are plainly not a checkpoint.
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"))
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # a bare pickle (protocol 2+), or PyTorch's legacy format
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # PyTorch's pre-1.6 format: protocol 2, its magic number


def _kind(head: bytes) -> str | None:
    """What a file that is not a PyTorch zip archive is, from its first bytes; None for a zip archive."""
    if head.startswith(ZIP_MAGIC):
        return None
    for magic, name in IMAGE_MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head.startswith(PICKLE_MAGIC):
        return "a Python pickle or a legacy PyTorch file"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 3:  # a character cut at the end of the sample
                return "a text file"
    return UNKNOWN


UNKNOWN = "not a PyTorch file"


def _check_archive(path: Path) -> None:
    """Refuse a zip archive whose members would inflate beyond the file (a zip bomb) before torch reads it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: {e}); use an earlier checkpoint") from None
    size = path.stat().st_size
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or sum(m.file_size for m in members) > size:
        raise UserError(f"{path} is not a checkpoint written by torch.save (its members are compressed or larger than "
                        "the file); refused without reading it")


CHECKPOINT = "an alexnet checkpoint (a .pt file written by 'alexnet train')"


def read_torch_file(path: str | Path, *, expect: str = CHECKPOINT, legacy: bool = False,
                    map_location: str | torch.device = "cpu") -> Any:
    """What ``torch.load(path, weights_only=True)`` returns, or a one-line UserError saying what the file is.

    The one reader of PyTorch files given by a user (checkpoints, torchvision's weights). Before
    torch reads the file, its first bytes name an image, a text file or a bare pickle for what it
    is (``expect`` says what was wanted), and a zip archive whose members would inflate is refused
    unread. ``legacy`` also accepts PyTorch's pre-1.6 format (torchvision's published weights). No
    message of torch's unpickler is passed on: it can advise ``weights_only=False``, which would run
    the file's code.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not {expect}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise UserError(f"{path} is empty (0 bytes), not {expect}")
    kind = None if legacy and head.startswith(LEGACY_MAGIC) else _kind(head)
    if kind == UNKNOWN:
        raise UserError(f"{path} is not a PyTorch file (neither torch.save's zip format nor a kind of file alexnet "
                        f"knows); it is not {expect}")
    if kind is not None:
        raise UserError(f"{path} is {kind}, not {expect}")
    if head.startswith(ZIP_MAGIC):
        _check_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if any(w in str(e) for w in ("Unsupported global", "GLOBAL", "Unsupported class")):
            raise UserError(f"refused to load {path}: it holds Python objects that would run code when loaded; "
                            "only load files that hold tensors alone (a whole model saved with torch.save(model): "
                            "save model.state_dict() instead)") from None
        raise UserError(f"{path} is not a readable PyTorch file (truncated, corrupt or not one: "
                        f"{_unpickler_detail(e)}); it is not {expect}") from None
    except Exception as e:  # the unpickler raises many kinds on garbage: all mean "not readable"
        raise UserError(f"{path} is not a readable PyTorch file (truncated, corrupt or not one: "
                        f"{type(e).__name__}); it is not {expect}") from None


def _unpickler_detail(e: Exception) -> str:
    """The reason in torch's weights-only unpickler message, without its advice to load unsafely."""
    lines = [x.strip() for x in str(e).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip() or next((x for x in lines[i + 1:] if x), "")
            return rest or type(e).__name__
    return type(e).__name__


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint without executing code; one-line UserError for anything else.

    ``path`` may also be a run folder (its best.pt, else last.pt) or a safetensors export folder
    (:func:`alexnet.export.checkpoint_payload`; the tensors are on the CPU).

    Before torch reads the file its first bytes and its zip directory are checked (an image, a
    text file or a bare pickle is named for what it is). After, :func:`validate` checks the
    contents before anything is built from them.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} not found")
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return load(path / name, map_location)
        from alexnet.export import META_FILE, checkpoint_payload

        if (path / META_FILE).is_file():  # an export folder: every reader of a trained network takes one
            return checkpoint_payload(path)
        still = " (a run writes last.pt at the end of its first epoch)" if (path / "config.json").is_file() else ""
        raise UserError(f"{path} is a folder with no best.pt or last.pt{still}; name a checkpoint file")
    payload = read_torch_file(path, map_location=map_location)
    if isinstance(payload, dict) and payload and payload.get("format") != FORMAT and all(
            isinstance(k, str) and k.startswith(("features.", "classifier.")) for k in payload):
        if any(".conv1." in k or ".fc8." in k for k in payload):  # this package's layer names
            raise UserError(f"{path} is a bare state dict of this package's network, without the class names, mean "
                            "image and recipe a checkpoint carries; use the run's best.pt or last.pt, or an export")
        raise UserError(f"{path} is a bare state dict, not an alexnet checkpoint; if it holds torchvision's AlexNet, "
                        f"turn it into one with 'alexnet import-torchvision {path} --out FILE.pt'")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is a PyTorch file but not an alexnet checkpoint")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise UserError(f"{path} was written by a newer alexnet (format {payload.get('version')!r}); upgrade alexnet")
    validate(payload, str(path))
    return payload


# --------------------------------------------------------------------------------------------
# Validation: a crafted or damaged file must not decide what we build or how much memory we take.

# Ranges of model arguments that no real network here exceeds; checked before a network is built.
ARG_RANGES = {
    "num_classes": (1, 1_000_000),
    "towers": (1, 2),
    "in_channels": (1, 64),
    "input_size": (1, 4096),
    "width": (1e-4, 16.0),
    "dropout": (0.0, 1.0),
}
MAX_IMAGE_SIZE = 4096


def _constructor(arch: str):
    """The class that :func:`alexnet.model.build_model` makes for ``arch`` (its signature names the arguments)."""
    from alexnet import model

    if arch == "alexnet":
        return model.AlexNet
    if arch in getattr(model, "ARCHITECTURES", ("alexnet",)):
        module = __import__(f"alexnet.{arch}_alexnet", fromlist=["*"])
        classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                   and v.__module__ == module.__name__ and v.__name__.lower().endswith("alexnet")]
        if classes:
            return classes[0]
    raise UserError(f"unknown architecture {arch!r} (known: {', '.join(getattr(model, 'ARCHITECTURES', ('alexnet',)))}); "
                    "upgrade alexnet")


def _check_model_args(args: Any, source: str):
    """The constructor for ``args``, after every key is known and every value has its type and range."""
    import inspect

    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise UserError(f"{source}: model_args must be a table of keyword arguments, found {type(args).__name__}")
    arch = args.get("arch", "alexnet")
    if not isinstance(arch, str):
        raise UserError(f"{source}: model_args.arch must be a name, found {arch!r}")
    cls = _constructor(arch)
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(args) - set(params) - {"arch"})
    if unknown:
        raise UserError(f"{source}: unknown model argument(s) {', '.join(unknown)} for {arch}; "
                        "it was written by another version of alexnet")
    for name, value in args.items():
        if name == "arch":
            continue
        default = params[name].default
        if default is not inspect.Parameter.empty and default is not None:
            want = type(default)
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                raise UserError(f"{source}: model argument {name} should be a {want.__name__}, found {value!r}")
        if name in ARG_RANGES:
            lo, hi = ARG_RANGES[name]
            if not lo <= value <= hi:
                raise UserError(f"{source}: model argument {name}={value!r} is outside [{lo}, {hi}]; "
                                "the checkpoint is damaged or not from alexnet")
    return cls


def _expected_state(args: dict, source: str) -> dict[str, torch.Size]:
    """Parameter names and shapes of the network ``args`` describe, built on the meta device (no memory)."""
    from alexnet.model import build_model

    try:
        with torch.device("meta"):
            net = build_model(args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: its model arguments describe no network this alexnet can build ({e})") from None
    return {name: t.shape for name, t in net.state_dict().items()}


def _check_weights(state: Any, expected: dict[str, torch.Size], source: str) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{source}: 'model' must map parameter names to tensors; the checkpoint is damaged")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{source}: its weights do not match its model arguments (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); the checkpoint is damaged")
    for name, tensor in state.items():
        if tensor.shape != expected[name]:
            raise UserError(f"{source}: {name} is {tuple(tensor.shape)} but its model arguments make it "
                            f"{tuple(expected[name])}; the checkpoint is damaged")
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise UserError(f"{source}: {name} holds {bad} NaN or infinite value(s); this network cannot "
                                "predict anything: use an earlier checkpoint")
        elif not tensor.dtype == torch.bool and tensor.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise UserError(f"{source}: {name} has dtype {tensor.dtype}; the checkpoint is damaged")


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _check_data(data: Any, args: dict, source: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{source}: 'data' must be a table, found {type(data).__name__}; the checkpoint is damaged")
    classes, size, channels, mean = (data.get(k) for k in ("classes", "image_size", "channels", "mean_image"))
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{source}: data.classes must be a list of class names; the checkpoint is damaged")
    if len(set(classes)) != len(classes):
        raise UserError(f"{source}: data.classes names a class twice; the checkpoint is damaged")
    if "num_classes" in args and len(classes) != args["num_classes"]:
        raise UserError(f"{source}: {len(classes)} class names for a network of {args['num_classes']} outputs; "
                        "the checkpoint is damaged")
    if not _int_in(size, 1, MAX_IMAGE_SIZE) or not _int_in(channels, 1, ARG_RANGES["in_channels"][1]):
        raise UserError(f"{source}: data.image_size {size!r} / data.channels {channels!r} are not a sane image "
                        "format; the checkpoint is damaged")
    if args.get("in_channels", channels) != channels:
        raise UserError(f"{source}: the network takes {args['in_channels']} channel(s), its data has {channels}; "
                        "the checkpoint is damaged")
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (size, size, channels) or not mean.is_floating_point():
        shape = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
        raise UserError(f"{source}: data.mean_image is {shape}, expected a float ({size}, {size}, {channels}) "
                        "tensor; the checkpoint is damaged")
    if not bool(torch.isfinite(mean).all()):
        raise UserError(f"{source}: data.mean_image holds NaN or infinite values; the checkpoint is damaged")


def _check_config(config: Any, args: dict, data: dict | None, source: str) -> None:
    if not isinstance(config, dict):
        raise UserError(f"{source}: 'config' must be a table, found {type(config).__name__}; the checkpoint is damaged")
    crop = config.get("crop_size")
    if crop is not None:
        limit = data["image_size"] if isinstance(data, dict) and _int_in(data.get("image_size"), 1, MAX_IMAGE_SIZE) else MAX_IMAGE_SIZE
        if not _int_in(crop, 1, limit):
            raise UserError(f"{source}: config.crop_size {crop!r} does not fit its {limit} px images; "
                            "the checkpoint is damaged")
        if "input_size" in args and args["input_size"] != crop:
            raise UserError(f"{source}: the network takes {args['input_size']} px crops, its recipe says "
                            f"{crop}; the checkpoint is damaged")
    scale = config.get("input_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise UserError(f"{source}: config.input_scale {scale!r} is not a positive number; the checkpoint is damaged")


def validate(payload: dict, source: str, *, for_inference: bool = False) -> None:
    """Check a loaded payload before anything is built from it; a one-line UserError names the first fault.

    Always: ``model_args`` (known keys of the architecture's constructor, types, ranges) and
    ``model`` (exactly the tensors those arguments make, shapes equal, all finite), so that
    building the network allocates no more than the file already holds. When present (always with
    ``for_inference``): ``data`` (class names, image format, a finite mean image of that format)
    and ``config`` (a crop that fits the images and matches the network, a positive input scale).
    """
    for key in ("model_args", "model") + (("data", "config") if for_inference else ()):
        if key not in payload:
            what = "a trained network's" if key in ("data", "config") else "an alexnet"
            raise UserError(f"{source} has no '{key}' section: it is not {what} checkpoint")
    args = payload["model_args"]
    _check_model_args(args, source)
    _check_weights(payload["model"], _expected_state(args, source), source)
    if "data" in payload:
        _check_data(payload["data"], args, source)
    if "config" in payload:
        _check_config(payload["config"], args, payload.get("data"), source)


def load_model_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """``model.load_state_dict`` with a one-line explanation when the architecture differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(
            f"{source} is for a different architecture (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "use the model flags it was trained with"
        )
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise UserError(
                f"{source} does not fit this model: {name} is {tuple(tensor.shape)} there and "
                f"{tuple(own[name].shape)} here (another class count, width or input size)"
            )
    model.load_state_dict(state)
