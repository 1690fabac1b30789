"""A new user's first hour: the core install without extras, the wheel, the demo and its built-in data.

* Without the optional extras (triton, onnx, tensorboard) every module imports and every
  ``--help`` works; a command that needs an extra says in one line which one to install. Checked
  in a child Python that sees this environment's packages less the extras' (a folder of links).
* The wheel carries the built-in data and its licence, and exactly the package's own files.
* The demo refuses a device it cannot use before it prepares anything, and the built-in data's
  folder holding another data set is refused, never trained on in the built-in data's name; run
  again, it evaluates its finished run without advice it has no flag for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from alexnet import checkpoint
from alexnet.builtin import BUILTIN_RECIPE, is_builtin_store, prepare_builtin
from alexnet.cli import main
from alexnet.data import open_store
from alexnet.errors import UserError
from alexnet.model import AlexNet
from helpers import make_store

REPO = Path(__file__).resolve().parents[1]
EXTRAS = {"triton": "triton", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "tensorboard": "tensorboard"}


def _site_without_extras(folder: Path) -> Path:
    """A folder of links to this environment's installed packages, less the extras' (and their metadata)."""
    folder.mkdir()
    for site in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(site).iterdir():
            top = entry.name.split("-")[0].split(".")[0].lower()
            if top in EXTRAS or entry.name.endswith(".pth") or entry.name.startswith("__editable__"):
                continue
            if not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


CHILD = textwrap.dedent('''
    import argparse, contextlib, importlib, importlib.util, io, json, pkgutil, sys
    extras = {extras!r}
    report = dict(found=[m for m in extras if importlib.util.find_spec(m) is not None], failed=[], helps={{}}, runs={{}})
    import alexnet
    for m in pkgutil.walk_packages(alexnet.__path__, "alexnet."):
        if m.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(m.name)
        except Exception as e:
            report["failed"].append(f"{{m.name}}: {{e!r}}")
    from alexnet.cli import build_parser, main

    def commands(parser, path):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, path + [name])

    def run(argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
        return [code or 0, out.getvalue(), err.getvalue()]

    for path in commands(build_parser(), []):
        code, out, err = run(path + ["--help"])
        report["helps"][" ".join(path) or "alexnet"] = [code, len(out), err]
    for name, argv in json.loads(sys.argv[1]).items():
        report["runs"][name] = run(argv)
    print(json.dumps(report))
''')


@pytest.mark.slow
def test_core_install_without_extras_imports_helps_and_names_the_extra(tmp_path):
    store = make_store(tmp_path / "data")
    args = dict(num_classes=3, in_channels=3, input_size=28, stem="small", width=0.125, towers=1, dropout=0.0)
    data = dict(classes=list("abc"), image_size=32, channels=3, mean_image=torch.zeros(32, 32, 3))
    checkpoint.save(tmp_path / "net.pt", dict(model_args=args, model=AlexNet(**args).state_dict(), data=data,
                                              config=dict(crop_size=28)))
    small = ["--stem", "small", "--width", "0.125", "--crop-size", "28", "--batch-size-per-device", "8", "--quiet"]
    runs = {
        "onnx": ["export", str(tmp_path / "net.pt"), "--format", "onnx", "--out", str(tmp_path / "exported")],
        "tensorboard": ["train", str(store), "--out", str(tmp_path / "run-tb"), "--tensorboard", *small],
        "triton": ["train", str(store), "--out", str(tmp_path / "run-sk"), "--step-kernels", "fused-sgd", *small],
    }
    site = _site_without_extras(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(site)])
    child = subprocess.run([sys.executable, "-S", "-c", CHILD.format(extras=tuple(EXTRAS)), json.dumps(runs)],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["found"] == []  # the child really lacks the extras
    assert report["failed"] == []
    assert len(report["helps"]) >= 14 and "experiment ablations" in report["helps"] and "demo" in report["helps"]
    for command, (code, out_chars, err) in report["helps"].items():
        assert code == 0 and out_chars > 100 and err == "", command
    for extra, (code, out, err) in report["runs"].items():
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and f"pip install 'alexnet[{extra}]'" in lines[0], (extra, err)
    assert not any((tmp_path / name).exists() for name in ("exported", "run-tb", "run-sk"))


def _tracked_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (no build/, .venv, caches or runs)."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                  ".hypothesis", "runs", "data", "learning-check")
    shutil.copytree(REPO, dest, ignore=skip, symlinks=True)
    return dest


@pytest.mark.slow
def test_wheel_holds_the_package_the_builtin_data_and_its_licence(tmp_path):
    source = _tracked_copy(tmp_path / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w",
                            str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No matching distribution" in build.stderr:
        pytest.skip("no package index to fetch setuptools from")
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("alexnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {str(p.relative_to(source)) for p in (source / "alexnet").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {n for n in names if not n.startswith("alexnet-")} == package  # every file of the package, nothing else
    assets = {str(p.relative_to(source)) for p in (source / "alexnet" / "assets").rglob("*") if p.is_file()}
    assert "alexnet/assets/fashion_mnist/LICENSE" in assets and assets <= names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    assert any(n.endswith("licenses/alexnet/assets/fashion_mnist/LICENSE") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # the package's own


def test_demo_refuses_a_device_it_cannot_use_before_preparing_data(tmp_path, capsys):
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", device, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0]
    assert not (tmp_path / "demo" / "data").exists()
    store = make_store(tmp_path / "data")  # a prepared data set is no folder for the demo's data and run
    assert main(["demo", "--out", str(store), "--quiet"]) == 2
    assert "holds a prepared data set" in capsys.readouterr().err
    assert sorted(p.name for p in store.iterdir() if p.is_dir()) == []


@pytest.mark.slow
def test_builtin_data_is_recognised_and_another_data_set_in_its_place_refused(tmp_path):
    lines = []
    store = prepare_builtin(tmp_path / "builtin", show_progress=False, log=lines.append)
    assert is_builtin_store(store) and any("preparing" in line for line in lines)
    assert [store.classes[0], store.num_classes, store.image_size, store.channels] == ["T-shirt/top", 10, 32, 1]
    lines.clear()
    again = prepare_builtin(tmp_path / "builtin", show_progress=False, log=lines.append)
    assert lines == [] and is_builtin_store(again)  # opened, not prepared again
    # named as DATA (the folder a demo or experiment prepared), it takes the demo's recipe, not the paper's 224 crops
    import argparse

    from alexnet.commands.experiment import _base
    from alexnet.experiments.runs import experiment_inputs

    *_, builtin, _, base = experiment_inputs(tmp_path / "builtin", tmp_path / "exp", None, show_progress=False,
                                             log=lines.append)
    assert builtin and base == BUILTIN_RECIPE
    named = _base(argparse.Namespace(data=str(tmp_path / "builtin"), base_config=None, set=["lr=0.02"], epochs=1))
    assert named == BUILTIN_RECIPE.replace(lr=0.02, epochs=1)

    other = make_store(tmp_path / "other")
    manifest = (other / "manifest.json").read_bytes()
    assert not is_builtin_store(open_store(other))
    with pytest.raises(UserError, match="holds another prepared data set .*not the built-in Fashion-MNIST"):
        prepare_builtin(other, show_progress=False, log=lines.append)
    from alexnet.demo import run_demo

    demo = tmp_path / "demo"
    shutil.copytree(other, demo / "data")
    with pytest.raises(UserError, match="holds another prepared data set"):
        run_demo(demo, show_progress=False, log=lines.append, config=BUILTIN_RECIPE.replace(device="cpu"))
    assert (other / "manifest.json").read_bytes() == manifest and not (demo / "run").exists()


@pytest.mark.slow
def test_demo_run_again_evaluates_the_finished_run_without_advice_it_cannot_take(tmp_path):
    from alexnet.demo import run_demo
    from alexnet.training import train

    config = BUILTIN_RECIPE.replace(device="cpu", epochs=1, max_steps_per_epoch=2)  # the demo's recipe, two steps
    prepare_builtin(tmp_path / "data", show_progress=False, log=lambda s: None)
    train(config, tmp_path / "data", tmp_path / "run", show_progress=False, log=lambda s: None)  # a finished run
    lines = []
    result = run_demo(tmp_path, show_progress=False, log=lines.append, config=config)
    assert any("holds the finished run; evaluating it again" in line for line in lines)
    assert not any("--epochs" in line for line in lines), lines  # alexnet demo has no such flag
    assert [json.loads(m)["epoch"] for m in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
    assert 0 <= result["centre_accuracy"] <= 1 and (tmp_path / "run" / "filters.png").is_file()
