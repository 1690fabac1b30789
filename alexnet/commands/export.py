"""``alexnet export`` (safetensors, ONNX, torchvision keys) and ``alexnet import-torchvision``."""

from __future__ import annotations

import argparse

from alexnet.commands import CommaList


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained network as safetensors weights and/or an ONNX graph, for use outside this package",
        description="Export a checkpoint to a folder: 'safetensors' (the weights, the mean image, and alexnet.json "
        "with what is needed to rebuild the network), 'onnx' (uint8 NHWC images in, softmax probabilities out: "
        "centre crop, mean subtraction, input scale and the network in one graph, any batch size; opset 18), "
        "'torchvision' (a state dict with torchvision's keys, for networks of torchvision's layout). "
        "'alexnet predict' and 'alexnet evaluate' accept the folder in place of a checkpoint.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, run directory or safetensors export folder")
    p.add_argument("--format", action=CommaList, default=["safetensors"], metavar="FORMAT[,FORMAT...]",
                   choices=("safetensors", "onnx", "torchvision"),
                   help="one or more of safetensors, onnx, torchvision, joined by commas (default: safetensors); "
                   "onnx needs the 'onnx' extra: pip install 'alexnet[onnx]'")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the export to")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in DIR")
    p.set_defaults(func=run_export)

    t = sub.add_parser(
        "import-torchvision",
        help="turn torchvision's AlexNet weights (alexnet-owt-*.pth) into a checkpoint for evaluate/predict/show/export",
        description="Read a state dict of torchvision's AlexNet (the 'one weird trick' layout: 64-192-384-256-256 "
        "kernels, no LRN) and write an alexnet checkpoint. torchvision's ImageNet normalisation becomes a constant "
        "mean image, input scale 1/255 and conv1 weights divided by the per-channel std, so evaluation matches "
        "torchvision's (shorter side 256, centre crop 224). Nothing is downloaded.",
    )
    t.add_argument("weights", metavar="WEIGHTS.pth", help="torchvision's AlexNet state dict (.pth, or .safetensors)")
    t.add_argument("--out", required=True, metavar="FILE.pt", help="checkpoint to write")
    t.add_argument("--classes", metavar="FILE_OR_DATA",
                   help="class names, one per line in fc8's order, or a prepared data set to take them from "
                   "(for ImageNet: the store 'alexnet prepare' made); default: the numbers 0..N-1")
    t.add_argument("--image-size", type=int, default=256, help="side of the stored images (default 256, torchvision's resize)")
    t.add_argument("--crop-size", type=int, default=224, help="centre crop fed to the network (default 224)")
    t.add_argument("--overwrite", action="store_true", help="replace FILE.pt if it exists")
    t.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    from alexnet.display import printable
    from alexnet.errors import UserError
    from alexnet.export import write_export
    from alexnet.trained import load

    payload = load(args.checkpoint)
    try:
        meta = write_export(payload, args.out, args.format, source=args.checkpoint, overwrite=args.overwrite)
    except OSError as e:  # a full disk, a folder we may not write: name the export, not a temporary file in it
        raise UserError(f"could not write the export to {printable(args.out)}: {e.strerror or e}; no new export "
                        "was made there") from None
    files = ", ".join(meta["files"].values())
    print(f"exported {args.checkpoint} to {args.out}: {files} and alexnet.json")
    if "onnx" in meta["files"]:
        s, c = meta["image_size"], meta["channels"]
        print(f"ONNX (opset {meta['onnx']['opset']}): input 'images' uint8 (N, {s}, {s}, {c}), "
              f"output 'probabilities' float32 (N, {len(meta['classes'])})")
    return 0


def _read_classes(spec: str | None, count: int) -> list[str]:
    from pathlib import Path

    from alexnet.errors import UserError

    if spec is None:
        return [str(i) for i in range(count)]
    path = Path(spec)
    if path.is_dir():
        from alexnet.data import open_store

        names = list(open_store(path).classes)
    elif path.is_file():
        try:
            # utf-8-sig: a byte-order mark (as some Windows editors write) is not part of the first name
            names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"{path} is not a text file of class names") from None
    else:
        raise UserError(f"--classes {spec} does not exist; give a text file (one name per line) or a prepared data set")
    if len(names) != count:
        raise UserError(f"--classes {spec} has {len(names)} names, the network {count} outputs")
    if len(set(names)) != len(names):
        raise UserError(f"--classes {spec} names a class twice")
    return names


def run_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from alexnet import checkpoint
    from alexnet.atomic import file_in_the_way
    from alexnet.data.images import MAX_IMAGE_SIZE
    from alexnet.errors import UserError
    from alexnet.torchvision_alexnet import import_checkpoint_payload, read_weights
    from alexnet.trained import TORCHVISION_FILE, build_network

    src, out = Path(args.weights), Path(args.out)
    if src.is_dir():
        hint = f" ({src / TORCHVISION_FILE}?)" if (src / TORCHVISION_FILE).is_file() else ""
        raise UserError(f"{src} is a folder; name the weights file (.pth) in it{hint}")
    if not src.is_file():
        raise UserError(f"{src} does not exist or is not a file")
    if out.is_dir() or args.out.endswith("/"):
        raise UserError(f"--out {args.out} is a folder; name the checkpoint file to write, e.g. {out / 'torchvision.pt'}")
    if (blocker := file_in_the_way(out)) is not None:
        raise UserError(f"--out {out}: {blocker} is a file, not a folder")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; choose another --out or add --overwrite")
    if out.exists() and out.name in ("best.pt", "last.pt") and (out.parent / "config.json").is_file():
        raise UserError(f"{out} is a checkpoint of the run in {out.parent}, which only that run writes; "
                        "choose another --out")
    if out.resolve() == src.resolve():
        raise UserError("--out names the weights file itself; choose another path")
    if out.exists() and out.stat().st_size and not _is_torch_file(out):
        raise UserError(f"{out} exists and is not a PyTorch file; --overwrite replaces only a checkpoint, so choose "
                        "another --out")
    if not 1 <= args.image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"--image-size {args.image_size} must be between 1 and {MAX_IMAGE_SIZE}")
    if not 1 <= args.crop_size <= args.image_size:
        raise UserError(f"--crop-size {args.crop_size} must be between 1 and --image-size {args.image_size}")
    if args.crop_size < 63:
        raise UserError(f"--crop-size {args.crop_size} is too small for torchvision's AlexNet (63 px or more)")
    state = _unwrap(read_weights(src), src)
    try:
        payload = import_checkpoint_payload(state, _read_classes(args.classes, _fc8_outputs(state, src)),
                                            image_size=args.image_size, crop_size=args.crop_size)
    except (KeyError, ValueError) as e:
        raise UserError(f"{src} is not torchvision's AlexNet: {e.args[0]}") from None
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = {k: v.shape for k, v in build_network(payload["model_args"]).state_dict().items()}
    if any(expected[k] != v.shape for k, v in payload["model"].items()):
        raise UserError(f"{src} has torchvision's AlexNet keys but other shapes; only the standard layout "
                        "(64-192-384-256-256, fc 4096) can be imported")
    checkpoint.save(out, payload)
    print(f"wrote {out}: torchvision's AlexNet, {len(payload['data']['classes'])} classes; "
          f"try 'alexnet predict {out} IMAGE' or 'alexnet export {out} --format onnx --out DIR'")
    return 0


def _is_torch_file(path) -> bool:
    """Whether ``path`` starts as torch.save's zip format or PyTorch's legacy format does."""
    from alexnet import checkpoint

    with open(path, "rb") as f:
        head = f.read(16)
    return head.startswith((checkpoint.ZIP_MAGIC, checkpoint.LEGACY_MAGIC))


def _unwrap(state, src) -> dict:
    """The state dict inside what torch.load returned: plain, under 'model'/'state_dict', or with DDP's 'module.'."""
    import torch

    from alexnet import checkpoint
    from alexnet.errors import UserError

    if isinstance(state, dict) and state.get("format") == checkpoint.FORMAT:
        raise UserError(f"{src} is already an alexnet checkpoint; give it to evaluate, predict, show or export as it is")
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if (not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state)
            or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise UserError(f"{src} does not hold a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if "features.conv1.weight" in state:
        raise UserError(f"{src} holds the weights of this package's AlexNet (features.conv1, ...), not torchvision's; "
                        "an 'alexnet train' checkpoint is used as it is")
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise UserError(f"{src} is not torchvision's AlexNet: {key} holds {tensor.dtype} values, not weights")
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{src}: {key} holds NaN or infinite values; these weights cannot predict anything")
    return state


def _fc8_outputs(state: dict, src) -> int:
    from alexnet.errors import UserError

    w = state.get("classifier.6.weight")
    if w is None:
        raise UserError(f"{src} is not torchvision's AlexNet: it has no classifier.6.weight")
    if w.ndim != 2 or w.shape[0] < 1:
        raise UserError(f"{src} is not torchvision's AlexNet: classifier.6.weight is {tuple(w.shape)}, "
                        "not (classes, 4096)")
    return int(w.shape[0])
