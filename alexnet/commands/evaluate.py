"""``alexnet evaluate CHECKPOINT... DATA``: top-1/top-5 error, centre or ten crops, ensembles."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error of one checkpoint or the softmax average of several",
        description="Top-1 and top-5 error on a prepared split. Several checkpoints are averaged "
        "(softmax), as the paper's 5- and 7-CNN results.",
    )
    p.add_argument("paths", nargs="+", metavar="CHECKPOINT... DATA", help="checkpoint file(s) or run directories, then the prepared data set")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax of the ten crops (section 4.1)")
    p.add_argument("--split", default="val", help="which split of DATA (default: val)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (x10 with --ten-crop)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.data import open_store
    from alexnet.data.loader import Loader
    from alexnet.errors import UserError
    from alexnet.evaluate import check_compatible, evaluate, load_member
    from alexnet.inference import pick_device, progress_bar

    if len(args.paths) < 2:
        raise UserError("give at least one checkpoint and then the prepared data set")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    *checkpoints, data = args.paths
    device = pick_device(args.device)
    store = open_store(data)
    members = [load_member(c, device) for c in checkpoints]
    check_compatible(members, store.classes)
    split = store.split(args.split)
    loader = Loader(split, args.batch_size, shuffle=False, seed=0, drop_last=False, pin_memory=device.type == "cuda")
    loader.set_epoch(0)
    result = evaluate(members, loader, ten_crop=args.ten_crop, precision="bf16" if device.type == "cuda" else "fp32",
                      progress=lambda it: progress_bar(it, len(loader), "evaluate"))
    result.update(checkpoints=checkpoints, split=args.split, ten_crop=args.ten_crop)
    if args.json:
        print(json.dumps(result))
    else:
        views = "ten crops" if args.ten_crop else "centre crop"
        who = f"{len(members)} networks averaged" if len(members) > 1 else checkpoints[0]
        print(f"{who}, {views}, {result['images']} {args.split} images: "
              f"top-1 error {result['top1_error']:.2%}, top-5 error {result['top5_error']:.2%}")
    return 0
