"""``alexnet predict CHECKPOINT IMAGE...``: the top-5 classes of each image."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-5 classes with probabilities for image files",
        description="Preprocess each image exactly as for evaluation (shorter side to the training "
        "size, centre crop, mean subtraction) and print its five most probable classes.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, anything Pillow reads)")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax of the ten crops")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image (default 5)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.inference import pick_device, predict_files

    device = pick_device(args.device)
    failures = 0
    for path, result in predict_files(args.checkpoint, args.images, device=device, ten_crop=args.ten_crop, top=args.top):
        if isinstance(result, str):
            failures += 1
            print(json.dumps({"image": path, "error": result}) if args.json else f"{path}: skipped: {result}")
            continue
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": c, "probability": p} for c, p in result]}))
        else:
            print(path)
            for c, p in result:
                print(f"  {p:7.2%}  {c}")
    return 1 if failures else 0
