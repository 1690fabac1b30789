"""``alexnet evaluate CHECKPOINT... DATA``: top-1/top-5 error, centre or ten crops, ensembles."""

from __future__ import annotations

import argparse
import json
import sys

from alexnet.display import printable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error of one checkpoint or the softmax average of several",
        description="Top-1 and top-5 error on a prepared split. Several checkpoints are averaged "
        "(softmax), as the paper's 5- and 7-CNN results. Exit status: 0 evaluated, 2 a usage error "
        "(bad path, bad flag, networks trained on other classes).",
    )
    p.add_argument("paths", nargs="+", metavar="CHECKPOINT... DATA", help="checkpoint file(s), run directories or safetensors export folders, then the prepared data set")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax of the ten crops (section 4.1)")
    p.add_argument("--split", default="val", help="which split of DATA (default: val)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (x10 with --ten-crop)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"top1_error", "top5_error" (not with 5 classes or fewer), "images", '
                   '"skipped_images" (damaged images left out), "checkpoints", "split", "ten_crop"}')
    p.add_argument("--cpu-threads", type=int, default=0, metavar="N",
                   help="CPU threads for torch (0: torch's default, one per core; capped at the core count)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.data import open_store
    from alexnet.data.loader import Loader
    from alexnet.errors import UserError
    from alexnet.devices import apply_process_settings
    from alexnet.evaluate import check_compatible, check_distinct, check_store, evaluate, top5_is_informative
    from alexnet.inference import progress_bar
    from alexnet.runtime import pick_device
    from alexnet.trained import load_member

    if len(args.paths) < 2:
        raise UserError("give at least one checkpoint and then the prepared data set")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    *checkpoints, data = args.paths
    apply_process_settings(args.cpu_threads, False, log=lambda s: print(s, file=sys.stderr))
    device = pick_device(args.device)
    members = [load_member(c, device) for c in checkpoints]  # first: a data set named first is said to be one
    store = open_store(data, hold=True)
    for member in members:
        check_store(member, store, data)
    check_compatible(members, store.classes)
    check_distinct(members)
    split = store.split(args.split)
    loader = Loader(split, args.batch_size, shuffle=False, seed=0, drop_last=False, pin_memory=device.type == "cuda")
    loader.set_epoch(0)
    result = evaluate(members, loader, ten_crop=args.ten_crop, precision="bf16" if device.type == "cuda" else "fp32",
                      progress=lambda it: progress_bar(it, len(loader), "evaluate"))
    if result.get("nonfinite_images"):
        raise UserError(f"{result['nonfinite_images']} of {result['images']} {args.split} images gave NaN or infinite "
                        "network outputs, so no error rate is reported; the network overflows on this data "
                        "(try the checkpoint before, or check that DATA is prepared like its training set)")
    if not top5_is_informative(store.num_classes):
        result.pop("top5_error", None)
    result.update(skipped_images=loader.epoch_skipped, checkpoints=checkpoints, split=args.split, ten_crop=args.ten_crop)
    if args.json:
        print(json.dumps(result))
    else:
        views = "ten crops" if args.ten_crop else "centre crop"
        who = f"{len(members)} networks averaged" if len(members) > 1 else members[0].source
        top5 = f", top-5 error {result['top5_error']:.2%}" if "top5_error" in result else ""
        skipped = f" ({result['skipped_images']} damaged images skipped)" if result["skipped_images"] else ""
        print(printable(f"{who}, {views}, {result['images']} {args.split} images{skipped}: "
                        f"top-1 error {result['top1_error']:.2%}{top5}"))
    return 0
