"""Every subcommand, driven with bad inputs: each ends in exit status 2 and one line on stderr that
names the fault and mentions --debug, never a traceback. ``alexnet --help`` lists the subcommands;
the table must cover each of them (checked below), so a new command cannot slip past it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import checkpoint
from alexnet.cli import build_parser, main
from alexnet.export import write_export
from alexnet.model import AlexNet

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_classes=3, stem="small", input_size=28, width=0.125, in_channels=3)


@pytest.fixture(scope="module")
def paths(tmp_path_factory, shared_store) -> dict[str, str]:
    """Named things a user can give: a real store and checkpoint, and every kind of wrong path."""
    root = tmp_path_factory.mktemp("cli")
    store = shared_store(per_class=4)
    other = shared_store(per_class=4, image_size=16)  # another image size
    classes = json.loads((store / "manifest.json").read_text())["classes"]
    ckpt = root / "c.pt"
    checkpoint.save(ckpt, dict(model_args=dict(SMALL), model=AlexNet(**SMALL).state_dict(),
                               config=dict(crop_size=28, subtract_mean=True, input_scale=1.0),
                               data=dict(classes=classes, image_size=32, channels=3,
                                         mean_image=torch.full((32, 32, 3), 120.0))))
    (root / "notes.txt").write_text("some text, not a checkpoint\n")
    torch.save(AlexNet(**SMALL).state_dict(), root / "state.pt")  # weights alone, no checkpoint around them
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(root / "photo.png")
    (root / "empty_dir").mkdir()
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    run2 = root / "run2"
    run2.mkdir()
    (run2 / "config.json").write_text("{}")
    (run2 / "last.pt").write_text("text where a checkpoint should be")
    write_export(checkpoint.load(ckpt), root / "export", ["safetensors"], source=str(ckpt))
    onnx_only = root / "onnx_only"  # what 'export --format onnx' leaves: no weights for PyTorch to read
    onnx_only.mkdir()
    meta = json.loads((root / "export" / "alexnet.json").read_text())
    (onnx_only / "alexnet.json").write_text(json.dumps({**meta, "files": {"mean_image": "mean_image.safetensors",
                                                                          "onnx": "model.onnx"}}))
    recipes = {  # recipe files with values of the wrong type: never rounded, stringified or ignored
        "num_as_path.json": '{"init_from": 5}', "float_kernels.json": '{"channels": [48.5, 128, 192, 192, 128]}',
        "nested.json": '{"freeze": [["conv1"]]}', "list_as_name.json": '{"recipe": ["original"]}',
        "date.toml": "lr = 1979-05-27\n", "table.toml": "[channels]\na = 1\n", "null.json": '{"epochs": null}',
    }
    for name, text in recipes.items():
        (root / name).write_text(text)
    return dict(STORE=str(store), STORE16=str(other), CKPT=str(ckpt), TEXT=str(root / "notes.txt"),
                IMAGE=str(root / "photo.png"), DIR=str(root / "empty_dir"), MISSING=str(root / "missing"),
                BADRUN=str(run), BADCKPTRUN=str(run2), STATE=str(root / "state.pt"), OUT=str(root / "out"), SRC=str(store.parent / "src"),
                EXPORT=str(root / "export"), ONNXEXPORT=str(onnx_only), **{f"RECIPE:{n}": str(root / n) for n in recipes})


# (argv with NAMES from the fixture, regex the one line must match)
CASES = [
    # the command line itself
    ([], "give a command"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["--debu", "demo"], "unrecognized arguments: --debu"),
    (["--versio"], "unrecognized arguments: --versio"),
    # prepare
    (["prepare", "MISSING", "OUT"], "MISSING"),
    (["prepare", "SRC", "TEXT"], "is a file"),
    (["prepare", "SRC", "SRC", "--force"], r"src holds other files than a store \(train, val\); prepare into a new"),
    (["prepare", "SRC", "BADRUN", "--force"], r"holds other files than a store \(config.json\)"),
    (["prepare", "SRC", "OUT", "--encoding", "jpeg", "--jpeg-quality", "0"], "--jpeg-quality must be between 1 and 100"),
    (["prepare", "SRC", "OUT", "--encoding", "jpeg", "--jpeg-quality", "101"], "--jpeg-quality must be between 1 and 100"),
    (["prepare", "SRC", "OUT", "--encoding", "raw", "--jpeg-quality", "50"],
     "--jpeg-quality 50 applies to JPEG stores only .*; drop --jpeg-quality, or use --encoding jpeg"),
    (["prepare", "SRC", "OUT", "--image-size", "0"], "--image-size"),
    (["prepare", "SRC", "OUT", "--image-size", "big"], "invalid int value: 'big'"),
    (["prepare", "SRC", "OUT", "--image-siz", "8"], "unrecognized arguments: --image-siz 8; did you mean --image-size"),
    (["prepare", "SRC", "OUT", "--workers", "-1"], "--workers must be 0 or more"),
    (["prepare", "SRC", "OUT", "--channels", "2"], "invalid choice: '2'"),
    (["prepare", "-photos", "OUT"], "required: OUT [(]-photos was read as a flag: put names that start with '-' after '--'"),
    (["prepare", "SRC"], "required: OUT"),
    # train: argument validation only
    (["train", "STORE"], "required: --out"),
    (["train", "STORE", "--out", "OUT", "--lr", "abc"], "'lr' wants a number, got 'abc'"),
    (["train", "STORE", "--out", "OUT", "--lr", "-1"], "lr must be positive"),
    (["train", "STORE", "--out", "OUT", "--epoch", "3"], "unrecognized arguments: --epoch 3; did you mean --epochs"),
    (["train", "STORE", "--out", "OUT", "--schedule", "cosine"], "invalid choice: 'cosine'"),
    (["train", "--milestones-epochs", "30", "60", "STORE", "--out", "OUT"],
     "unrecognized arguments: .*store [(]--milestones-epochs takes one word: join its items with commas"),
    (["train", "STORE", "--out", "OUT", "--freeze", "conv1,,fc8"], "an empty item in 'conv1,,fc8'"),
    (["train", "STORE", "--out", "STORE", "--crop-size", "28", "--stem", "small", "--batch-size-per-device", "4"], "--out .*store holds a prepared data set; name another folder for the run"),
    (["train", "STORE", "--out", "SRC", "--crop-size", "28", "--stem", "small", "--batch-size-per-device", "4"], r"--out .*src holds files that are not a run's \(train, val\); name a new or empty"),
    (["train", "STORE", "--out", "OUT", "--config", "DIR"], "config file .*empty_dir is a folder; give a JSON or TOML"),
    (["train", "STORE", "--out", "OUT", "--cpu-threads", "-2"], "cpu_threads must be >= 0"),
    (["train", "STORE", "--out", "OUT", "--config", "MISSING"], "config file .* does not exist"),
    (["train", "STORE", "--out", "OUT", "--config", "IMAGE"], "config file .*photo.png"),
    (["train", "STORE", "--out", "OUT", "--config", "RECIPE:num_as_path.json"], "'init_from' wants a string, got 5"),
    (["train", "STORE", "--out", "OUT", "--config", "RECIPE:float_kernels.json"], "'channels' wants a list of integers"),
    (["train", "STORE", "--out", "OUT", "--config", "RECIPE:nested.json"], r"'freeze' wants a list of strings, got \[\['conv1'\]\]"),
    (["train", "STORE", "--out", "OUT", "--config", "RECIPE:list_as_name.json"], "'recipe' wants a string"),
    (["train", "STORE", "--out", "OUT", "--config", "RECIPE:date.toml"], "'lr' wants a number, got datetime.date"),
    (["train", "STORE", "--out", "OUT", "--config", "RECIPE:table.toml"], "'channels' wants a list of integers, got {'a': 1}"),
    (["train", "STORE", "--out", "OUT", "--config", "RECIPE:null.json"], "'epochs' wants an integer, got None"),
    (["train", "STORE", "--out", "OUT", "--recipe", "original", "--no-lrn", "--channels", "1,2,3"], "channels must be five"),
    (["train", "STORE", "--out", "OUT", "--shuffle-window-images", "-1"], "shuffle_window_images must be >= 0"),
    (["train", "STORE", "--out", "OUT", "--freeze", "conv9"], "freeze: no layer 'conv9'"),
    (["train", "STORE", "--out", "OUT", "--stem", "small", "--crop-size", "28", "--width", "0.125",
      "--batch-size-per-device", "4", "--init-from", "TEXT"],
     "--init-from: .*notes.txt is a text file"),
    (["train", "STORE", "--out", "OUT", "--device", "tpu"], "'tpu' is not a device torch knows"),
    (["train", "STORE", "--out", "OUT", "--device", "meta"], "shape-only device"),
    # evaluate
    (["evaluate", "CKPT"], "give at least one checkpoint and then the prepared data set"),
    (["evaluate", "TEXT", "STORE"], "is a text file, not an alexnet checkpoint"),
    (["evaluate", "IMAGE", "STORE"], "is a PNG image, not an alexnet checkpoint"),
    (["evaluate", "MISSING", "STORE"], "checkpoint .*missing not found"),
    (["evaluate", "DIR", "STORE"], "is a folder with no best.pt or last.pt; name a checkpoint file"),
    (["evaluate", "BADRUN", "STORE"], r"no best.pt or last.pt \(a run writes last.pt at the end of its first epoch\)"),
    (["evaluate", "STATE", "STORE"], "is a bare state dict of this package's network, without the class names"),
    (["evaluate", "CKPT", "STORE", "--split", "test"], "the data set .*store has no 'test' split [(]it has train, val[)]"),
    (["evaluate", "CKPT", "MISSING"], "missing does not exist"),
    (["evaluate", "CKPT", "TEXT"], "notes.txt is a file, not a prepared data set"),
    (["evaluate", "CKPT", "CKPT"], "c.pt is a file, not a prepared data set"),
    (["evaluate", "CKPT", "SRC"], r"src is not a prepared data set .*make one: alexnet prepare \S*src NEW_FOLDER"),
    (["evaluate", "CKPT", "EXPORT"], r"export is not a prepared data set \(no manifest.json\); name the folder"),
    (["evaluate", "CKPT", "STORE16"], r"trained on 32 px images with 3 channel\(s\), .* holds 16 px images"),
    (["evaluate", "CKPT", "STORE", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["evaluate", "CKPT", "STORE", "--batch-size", "x"], "invalid int value: 'x'"),
    (["evaluate", "CKPT", "STORE", "--ten-cro"], "unrecognized arguments: --ten-cro; did you mean --ten-crop"),
    (["evaluate", "CKPT", "STORE", "--device", "tpu"], "'tpu' is not a device torch knows"),
    (["evaluate", "CKPT", "STORE", "--device", "meta"], "shape-only device"),
    (["evaluate", "CKPT", "STORE", "--device", "garbage"], "'garbage' is not a device torch knows"),
    (["evaluate", "CKPT", "STORE", "--device", ""], "--device is empty"),
    (["evaluate", "CKPT", "STORE", "--device", "cpu:3"], "one CPU device"),
    (["evaluate", "CKPT", "STORE", "--cpu-threads", "-1"], "--cpu-threads must be 0"),
    # predict
    (["predict", "TEXT", "IMAGE"], "is a text file, not an alexnet checkpoint"),
    (["predict", "IMAGE", "IMAGE"], "is a PNG image, not an alexnet checkpoint"),
    (["predict", "MISSING", "IMAGE"], "not found"),
    (["predict", "DIR", "IMAGE"], "no best.pt or last.pt"),
    (["predict", "CKPT", "IMAGE", "--top", "0"], "--top must be at least 1"),
    (["predict", "CKPT", "IMAGE", "--device", "mps"], "'mps'"),
    (["predict", "CKPT"], "required: IMAGE"),
    # show
    (["show"], "required: FIGURE"),
    (["show", "neighbors", "CKPT", "STORE"], "invalid choice: 'neighbors'"),
    (["show", "filters", "TEXT"], "is a text file"),
    (["show", "filters", "MISSING"], "not found"),
    (["show", "filters", "ONNXEXPORT"], "holds an ONNX model, not safetensors weights"),
    (["show", "filters", "DIR"], "is a folder with no best.pt or last.pt"),
    (["show", "neighbours", "CKPT", "STORE16"], "trained on 32 px images"),
    (["show", "neighbours", "CKPT", "STORE", "--images", "0"], "--images must be at least 1"),
    (["show", "neighbours", "CKPT", "STORE", "--device", "tpu"], "not a device torch knows"),
    (["show", "filters", "CKPT", "--ou", "x.png"], "unrecognized arguments: --ou x.png; did you mean --out"),
    # report
    (["report", "MISSING"], "does not exist"),
    (["report", "DIR"], "not a run directory"),
    (["report", "BADRUN"], "is damaged"),
    (["report", "BADCKPTRUN"], "is a text file, not an alexnet checkpoint"),
    # experiment
    (["experiment"], "required: EXPERIMENT"),
    (["experiment", "ablation", "--out", "OUT"], "invalid choice: 'ablation'"),
    (["experiment", "ablations", "--out", "OUT", "--set", "nokey"], "--set wants KEY=VALUE"),
    (["experiment", "ablations", "--out", "OUT", "--set", "wdth=1"], "unknown config key"),
    (["experiment", "ablations", "--out", "OUT", "--epochs", "0"], "--epochs must be at least 1"),
    (["experiment", "ablations", "--out", "OUT", "--variants", "nope"], "invalid choice: 'nope'"),
    (["experiment", "ablations", "--out", "OUT", "--variants", "no-lrn,nope"], "invalid choice: 'nope'"),
    (["experiment", "relu-vs-tanh", "--out", "OUT", "--lr", "0.1,fast"], "invalid float value: 'fast'"),
    (["experiment", "ablations", "--out", "OUT", "--base-config", "MISSING"], "does not exist"),
    (["experiment", "relu-vs-tanh", "--out", "OUT", "--batch-size", "0"], "--batch-size must be at least 1"),
    # export and import
    (["export", "CKPT"], "required: --out"),
    (["export", "TEXT", "--out", "OUT"], "is a text file"),
    (["export", "MISSING", "--out", "OUT"], "not found"),
    (["export", "DIR", "--out", "OUT"], "is a folder with no best.pt or last.pt"),  # a run without checkpoints
    (["export", "CKPT", "--out", "TEXT"], "notes.txt is a file; --out names a folder"),
    (["export", "CKPT", "--out", "BADRUN"], "holds other files"),  # a run directory
    (["export", "EXPORT", "--out", "EXPORT", "--overwrite"], "is the export being read"),
    (["export", "CKPT", "--out", "OUT", "--format", "torchvision"], "needs a network with torchvision's layout"),
    (["export", "CKPT", "--out", "OUT", "--format", "safetensors", "onnx"],
     "unrecognized arguments: onnx [(]--format takes one word: join its items with commas"),
    (["export", "CKPT", "--out", "OUT", "--format", "safetensors,,onnx"], "an empty item in 'safetensors,,onnx'"),
    (["import-torchvision", "MISSING", "--out", "OUT"], "missing"),
    (["import-torchvision", "TEXT", "--out", "OUT"], "notes.txt is a text file, not torchvision's AlexNet weights"),
    (["import-torchvision", "IMAGE", "--out", "OUT"], "photo.png is a PNG image, not torchvision's"),
    (["import-torchvision", "CKPT", "--out", "DIR", "--overwrite"], "--out .*empty_dir is a folder; name the checkpoint file"),
    # demo
    (["demo", "--out", "TEXT"], "notes.txt"),
    (["demo", "--quite"], "unrecognized arguments: --quite; did you mean --quiet"),
]


def _argv(case: list[str], paths: dict[str, str]) -> list[str]:
    return [paths.get(a, a) for a in case]


def _ids():
    return [" ".join(argv) or "(nothing)" for argv, _ in CASES]


@pytest.mark.parametrize("argv, message", CASES, ids=_ids())
def test_bad_input_ends_in_one_line_and_exit_2(argv, message, paths, capsys):
    code = main(_argv(argv, paths))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.match(r"alexnet( [a-z-]+)*: error: ", lines[0]), lines[0]
    assert "--debug" in lines[0]
    assert re.search(message.replace("MISSING", re.escape(paths["MISSING"])), lines[0]), lines[0]


def test_the_table_covers_every_subcommand():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    covered = {argv[0] for argv, _ in CASES if argv and argv[0] in commands}
    assert covered == set(commands)


@pytest.mark.parametrize("where", ["first", "after the command", "last"])
def test_debug_is_accepted_anywhere_and_shows_the_traceback(where, paths, capsys):
    argv = _argv(["evaluate", "MISSING", "STORE"], paths)
    at = {"first": 0, "after the command": 1, "last": len(argv)}[where]
    assert main(argv[:at] + ["--debug"] + argv[at:]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "UserError" in err
    assert err.strip().splitlines()[-1].startswith("alexnet evaluate: error: checkpoint")


def test_debug_with_a_flag_error_prints_the_usage(capsys):
    assert main(["prepare", "a", "b", "--debug", "--image-siz", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: alexnet prepare") and "Traceback" not in err


def test_cuda_device_beyond_the_machine_is_one_line(paths, capsys):
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert main(_argv(["evaluate", "CKPT", "STORE", "--device", f"cuda:{gpus + 6}"], paths)) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert (f"this machine has {gpus} CUDA GPU(s)" in line) if gpus else ("CUDA" in line and "use auto or cpu" in line)


def test_cpu_threads_above_the_cores_are_capped_with_a_note():
    from alexnet.devices import available_cores, cap_cpu_threads

    notes = []
    cores = available_cores()
    assert cap_cpu_threads(cores + 5, notes.append) == cores
    assert len(notes) == 1 and f"--cpu-threads {cores + 5} is more than the {cores} core(s)" in notes[0]
    assert cap_cpu_threads(1, notes.append) == 1 and cap_cpu_threads(0, notes.append) == 0 and len(notes) == 1
    assert cores == len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else True


def test_top5_is_not_shown_for_five_classes_or_fewer(paths, capsys):
    assert main(_argv(["evaluate", "CKPT", "STORE"], paths)) == 0
    out = capsys.readouterr().out
    assert "top-1 error" in out and "top-5" not in out
    assert main(_argv(["evaluate", "CKPT", "STORE", "--json"], paths)) == 0
    assert "top5_error" not in json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_training_shows_top5_only_with_more_than_five_classes(paths, tmp_path, capsys):
    small = ["--crop-size", "28", "--stem", "small", "--width", "0.125", "--batch-size-per-device", "4",
             "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"]
    assert main(_argv(["train", "STORE", "--out", str(tmp_path / "three"), *small], paths)) == 0
    out = capsys.readouterr().out
    assert "val top-1 error" in out and "top-5" not in out, out
    rng = np.random.default_rng(0)
    for c in range(6):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "src" / f"c{c}" / f"{i}.png")
    six = tmp_path / "six"
    assert main(["prepare", str(tmp_path / "src"), str(six), "--quiet", "--val-fraction", "0.25"]) == 0
    assert main(["train", str(six), "--out", str(tmp_path / "six-run"), *small]) == 0
    out = capsys.readouterr().out
    assert out.count("top-5") == 2, out  # the epoch's line and the last one


@pytest.mark.slow
def test_the_installed_entry_point_behaves_the_same(paths):
    """``python -m alexnet``, reading sys.argv: --debug at the end gives the traceback, then the one line."""
    argv = _argv(["evaluate", "MISSING", "STORE"], paths)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    debug = subprocess.run([sys.executable, "-m", "alexnet", *argv, "--debug"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("alexnet evaluate: error: checkpoint")


def test_evaluate_reports_no_error_rate_when_outputs_are_nan(paths, tmp_path, capsys):
    payload = checkpoint.load(paths["CKPT"])
    payload["model"]["classifier.fc8.weight"].fill_(3e38)  # finite weights whose logits overflow to inf
    bad = tmp_path / "overflow.pt"
    checkpoint.save(bad, {k: v for k, v in payload.items() if k not in ("format", "version")})
    assert main(["evaluate", str(bad), paths["STORE"]]) == 2
    captured = capsys.readouterr()
    assert "error" not in captured.out and "%" not in captured.out
    lines = [x for x in captured.err.splitlines() if x.strip() and not x.startswith("evaluate:")]  # no progress bar
    assert len(lines) == 1 and re.search(r"\d+ of \d+ val images gave NaN or infinite network outputs", lines[0])


def test_a_list_flag_takes_one_word_so_the_positionals_after_it_stay_positional():
    """``--freeze conv1 DATA``: DATA is the data set, not a layer; given twice, a list flag joins."""
    args = build_parser().parse_args(["train", "--freeze", "conv1", "DATA", "--out", "OUT", "--freeze", "conv2,fc8"])
    assert (args.data, args.freeze) == ("DATA", ["conv1", "conv2", "fc8"])
    args = build_parser().parse_args(["export", "CKPT", "--format", "onnx,torchvision", "--out", "OUT"])
    assert (args.checkpoint, args.format) == ("CKPT", ["onnx", "torchvision"])
    args = build_parser().parse_args(["export", "CKPT", "--out", "OUT"])
    assert args.format == ["safetensors"]  # the default, when not given
    args = build_parser().parse_args(["experiment", "ablations", "--variants", "full", "--variants", "tanh", "--out", "O"])
    assert args.variants == ["full", "tanh"]


@pytest.mark.parametrize("target", ["STORE", "SRC"])
def test_a_run_refused_for_its_folder_leaves_that_folder_as_it_was(target, paths, capsys):
    folder = Path(paths[target])
    before = sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))
    assert main(["train", paths["STORE"], "--out", str(folder), "--epochs", "1", "--quiet",
                 "--crop-size", "28", "--stem", "small", "--batch-size-per-device", "4"]) == 2
    assert sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*")) == before


@pytest.mark.parametrize("argv, advice", [
    (["prepare", "SRC", "OUT"], "interrupted; run the same command again to resume where it stopped"),
    (["train", "STORE", "--out", "OUT"], "interrupted; no checkpoint was written yet: run the same command again"),
    (["train", "STORE", "--out", "BADCKPTRUN"], "interrupted; add --resume to the same command to go on"),
    (["experiment", "ablations", "STORE", "--out", "OUT"], "interrupted; run the same command again: finished runs"),
    (["evaluate", "CKPT", "STORE"], "interrupted$"),
])
def test_ctrl_c_says_how_to_go_on(argv, advice, paths, capsys, monkeypatch):
    import alexnet.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    real = cli.build_parser

    def parser_with_interrupts():
        parser = real()
        parser.set_defaults(func=interrupted)
        for action in parser._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(func=interrupted)
                for inner in getattr(sub, "_subparsers", None) and sub._subparsers._group_actions or []:
                    for leaf in inner.choices.values():
                        leaf.set_defaults(func=interrupted)
        return parser

    monkeypatch.setattr(cli, "build_parser", parser_with_interrupts)
    assert main(_argv(argv, paths)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(advice, err[0]), err
