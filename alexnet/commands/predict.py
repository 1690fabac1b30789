"""``alexnet predict CHECKPOINT IMAGE...``: the top-5 classes of each image."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-5 classes with probabilities for image files",
        description="Preprocess each image exactly as for evaluation (shorter side to the training "
        "size, centre crop, mean subtraction) and print its five most probable classes. "
        "Exit status: 0 all images predicted, 1 some images could not be read (the others are "
        "still printed), 2 a usage error (bad model path, bad flag).",
    )
    p.add_argument("checkpoint", metavar="MODEL",
                   help="checkpoint file, run directory, or a folder written by 'alexnet export' (safetensors or ONNX)")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, anything Pillow reads), or folders: every image under them, recursively")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax of the ten crops")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image (default 5)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"model", "ten_crop", "images": [{"image", "top": [{"class", '
                   '"probability"}]} or {"image", "error"}], "failed"}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.display import printable
    from alexnet.inference import expand_image_paths, predict_files
    from alexnet.runtime import pick_device

    device = pick_device(args.device)
    images = expand_image_paths(args.images)
    results = predict_files(args.checkpoint, images, device=device, ten_crop=args.ten_crop, top=args.top)
    failures, rows = 0, []
    for path, result in results:
        if isinstance(result, str):
            failures += 1
            rows.append({"image": path, "error": result})
            if not args.json:
                print(printable(f"{path}: skipped: {result}"))
            continue
        rows.append({"image": path, "top": [{"class": c, "probability": p} for c, p in result]})
        if not args.json:
            print(printable(path))
            for c, p in result:
                print(printable(f"  {p:7.2%}  {c}"))
    if args.json:
        print(json.dumps({"model": args.checkpoint, "ten_crop": args.ten_crop, "images": rows, "failed": failures}))
    return 1 if failures else 0
