"""A hostile user's inputs that are well formed but mean the wrong thing, outputs of several files
replaced while something reads them, and diagnostics that must be kept: each test builds its
hostile input itself, and each case failed before its check existed.

1. Checks of meaning: a parent that computes otherwise, a run that would update nothing, a store
   rebuilt from other images, an export's files from different exports, a key given twice,
   flags without effect.
2. Replacements whole: a killed ``export --overwrite``, ``prepare --force`` under a reader or
   killed, a store file truncated under a running reader, a run's checkpoint as --out.
3. Diagnostics kept: damaged images counted where a person looks, user mistakes never
   "internal error".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import checkpoint, trained
from alexnet import config as cfg
from alexnet.cli import main
from alexnet.data import jpeg, open_store
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.runlock import run_lock
from helpers import QUIET, TINY, make_store, prepare_killed_mid_run, quiet_prepare, write_image_folder

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(stem="small", input_size=TINY.crop_size, width=TINY.width, in_channels=3)
FLAGS = ["--stem", "small", "--width", str(TINY.width), "--crop-size", str(TINY.crop_size), "--input-scale",
         str(TINY.input_scale), "--batch-size-per-device", "16", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def store(shared_store) -> Path:
    return shared_store()


def _fails(argv: list[str], capsys, match: str) -> str:
    """``alexnet ARGV`` ends in exit 2 and one line matching ``match``."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(match, err), err
    return err


def _network(path: Path, classes: int = 10, image_size: int = 32, seed: int = 0, **args) -> Path:
    """A checkpoint of a small AlexNet of ``args``, as training writes one."""
    torch.manual_seed(seed)
    args = dict(SMALL, num_classes=classes, dropout_style="paper", **args)
    checkpoint.save(path, dict(model_args=args, model=AlexNet(**args).state_dict(), config=TINY.to_dict(),
                               data=dict(classes=[f"c{i}" for i in range(classes)], image_size=image_size,
                                         channels=3, mean_image=torch.full((image_size, image_size, 3), 100.0))))
    return path


def _build(config, store: Path) -> list[str]:
    from alexnet.training.recipe import build_model

    said = []
    build_model(config, open_store(store), log=said.append)
    return said


# --- 1. checks of meaning ----------------------------------------------------------------------


def test_a_parent_of_another_activation_is_refused_before_a_run_folder(store, tmp_path, capsys):
    relu = _network(tmp_path / "relu.pt")
    with pytest.raises(UserError, match="trained with activation 'relu'.*give --activation relu as the parent"):
        _build(TINY.replace(init_from=str(relu), activation="tanh"), store)
    lrn = _network(tmp_path / "no-lrn.pt", lrn=False)  # another normalisation: the same refusal, its own flag
    with pytest.raises(UserError, match="give --no-lrn as the parent had it"):
        _build(TINY.replace(init_from=str(lrn)), store)
    _fails(["train", str(store), "--out", str(tmp_path / "run"), *FLAGS, "--init-from", str(relu),
            "--activation", "tanh"], capsys, "its layers would compute something else")
    assert not (tmp_path / "run").exists()


def test_what_is_dropped_or_frozen_while_random_is_said_and_a_run_updating_nothing_refused(store, tmp_path, capsys):
    six = _network(tmp_path / "six.pt", conv6_channels=32)  # the parent's sixth layer has no place here
    said = _build(TINY.replace(init_from=str(six), freeze=("conv1", "fc8")), store)
    assert said[-1].endswith("loaded conv1, conv2, conv3, conv4, conv5, fc6, fc7; drawn afresh fc8; dropped the "
                             "parent's conv6 (not in this network); fc8 frozen as drawn (--freeze): it stays random")
    every = "conv1,conv2,conv3,conv4,conv5,fc6,fc7,fc8"
    _fails(["train", str(store), "--out", str(tmp_path / "run"), *FLAGS, "--init-from", str(six), "--freeze", every],
           capsys, "--freeze names every layer of the network .*: the run would update nothing")
    _fails(["train", str(store), "--out", str(tmp_path / "run"), *FLAGS, "--freeze", every], capsys, "update nothing")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_store_rebuilt_from_other_images_is_another_store_for_resume(tmp_path):
    from alexnet.training import train
    from alexnet.training.recipe import store_identity

    data = make_store(tmp_path / "d")
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert store_identity(open_store(copy)) == store_identity(open_store(data))  # a copy is the same store
    config = TINY.replace(max_steps_per_epoch=1)
    train(config, data, tmp_path / "run", **QUIET)
    first = next((data.parent / "src" / "train" / "class_0").iterdir())
    pixels = np.asarray(Image.open(first)).copy()
    Image.fromarray(255 - pixels).save(first)  # the same folder, one image changed
    quiet_prepare(data.parent / "src", data, force=True, image_size=32)
    with pytest.raises(UserError, match="data: another store than the run was trained on"):
        train(config.replace(epochs=2), data, tmp_path / "run", resume=True, **QUIET)
    # a store prepared before the content digest existed is named by its manifest, as it was
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["content_digest"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert store_identity(open_store(copy)) != store_identity(open_store(data))
    assert re.fullmatch("[0-9a-f]{16}", store_identity(open_store(copy)))


def _export(payload_path: Path, out: Path) -> Path:
    from alexnet.export import write_export

    write_export(checkpoint.load(payload_path), out, ["onnx"], source=str(payload_path))
    return out


needs_onnx = pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None
                                    for m in ("onnx", "onnxruntime", "onnxscript")), reason="needs the 'onnx' extra")


@needs_onnx
@pytest.mark.slow
def test_an_exports_files_are_checked_against_each_other(tmp_path, capsys):
    ten = _export(_network(tmp_path / "ten.pt", classes=10), tmp_path / "ten")
    three = _export(_network(tmp_path / "three.pt", classes=3), tmp_path / "three")
    wider = _export(_network(tmp_path / "wide.pt", classes=10, image_size=36), tmp_path / "wide")
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    original = (ten / "model.onnx").read_bytes()
    shutil.copy(three / "model.onnx", ten / "model.onnx")  # 3 classes into a 10-class export
    _fails(["predict", str(ten), str(image)], capsys, "model.onnx does not belong with alexnet.json beside it")
    meta = json.loads((ten / "alexnet.json").read_text())
    del meta["digests"]  # as an export written before the digests: its shapes still tell
    (ten / "alexnet.json").write_text(json.dumps(meta))
    _fails(["predict", str(ten), str(image)], capsys, "gives probabilities.*where alexnet.json says 10 class")
    shutil.copy(wider / "model.onnx", ten / "model.onnx")  # another input size: no internal error
    _fails(["predict", str(ten), str(image)], capsys, r"takes images \['N', 36, 36, 3\].*\(N, 32, 32, 3\) images")
    (ten / "model.onnx").write_bytes(original)
    capsys.readouterr()
    assert main(["predict", str(ten), str(image)]) == 0


def test_a_config_file_with_a_key_given_twice_is_refused(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"epochs": 2, "lr": 0.01, "epochs": 30}')
    with pytest.raises(UserError, match="gives 'epochs' twice; keep one"):
        cfg.load_file(recipe)


def test_flags_without_effect_under_the_others_are_noted(store):
    said = _build(TINY.replace(lrn=False, lrn_convention="caffe", lrn_before_relu=True), store)
    assert said == ["note: --lrn-convention caffe, --lrn-before-relu change nothing in this network (it is the same "
                    "without, given the other flags); recorded in config.json all the same"]
    assert _build(TINY.replace(lrn=False), store) == []  # a flag that acts says nothing
    original = cfg.from_dict({**TINY.to_dict(), "recipe": "original", "lrn": False})
    assert not any("--lrn" in line for line in _build(original, store))  # what the recipe set is not the user's


def test_extending_a_finished_original_recipe_run_notes_its_first_epochs(store):
    from alexnet.training.resume import _settings_moved

    old = cfg.from_dict({"recipe": "original", "epochs": 3})
    notes = _settings_moved(old, old.replace(epochs=30), done=3)
    assert len(notes) == 1 and notes[0].startswith("epochs 3 -> 30: epochs 1-3 trained with the settings that ")
    assert "--lighting-off-last-epochs 24" in notes[0] and "--freeze-conv1-last-epochs 19" in notes[0]
    assert _settings_moved(old.replace(epochs=60), old.replace(epochs=90), done=3) == []  # epochs 1-3 alike


# --- 2. replacements whole ---------------------------------------------------------------------


def _cli(*args: str, kill: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), ALEXNET_KILL_AT=kill)
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


@pytest.mark.parametrize("kill, new", [("export-write:1", False), ("export-write:3", False),
                                       ("folder-swap:1", False), ("folder-swap:2", True)])
@pytest.mark.slow  # the CLI in a process of its own, killed at named points
def test_an_export_overwrite_killed_at_any_moment_leaves_a_whole_export(tmp_path, kill, new):
    from alexnet.export import write_export

    old_net, new_net = _network(tmp_path / "old.pt", seed=1), _network(tmp_path / "new.pt", seed=2)
    out = tmp_path / "exp"
    write_export(checkpoint.load(old_net), out, ["safetensors"])
    killed = _cli("export", str(new_net), "--out", str(out), "--overwrite", kill=kill)
    assert killed.returncode == -9, killed.stderr
    weights = trained.load(out)["model"]  # a whole export, the old one or the new one
    expected = checkpoint.load(new_net if new else old_net)["model"]
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    write_export(checkpoint.load(new_net), out, ["safetensors"], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "new.pt", "old.pt"]  # the killed one's folder swept


def test_an_export_into_the_current_folder_leaves_it_the_current_folder(tmp_path, monkeypatch):
    from alexnet.export import write_export

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for seed, overwrite in ((1, False), (2, True)):
        write_export(checkpoint.load(_network(tmp_path / f"{seed}.pt", seed=seed)), ".", ["safetensors"],
                     overwrite=overwrite)
        assert "alexnet.json" in os.listdir(".")  # not a deleted folder's empty listing


def test_import_torchvision_never_writes_over_a_runs_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    best = _network(run / "best.pt")
    before = best.read_bytes()
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "w.pth")
    _fails(["import-torchvision", str(tmp_path / "w.pth"), "--out", str(best), "--overwrite"], capsys,
           "is a checkpoint of the run in .*, which only that run writes")
    assert best.read_bytes() == before


@pytest.mark.slow  # a prepare in a process of its own, killed with SIGKILL
def test_prepare_force_waits_for_its_readers_and_swaps_the_store_in_whole(tmp_path):
    data = make_store(tmp_path / "d")
    src, before = data.parent / "src", open_store(data).manifest["content_digest"]
    reader = open_store(data, hold=True)  # a training run or an evaluation reads it
    with pytest.raises(UserError, match="is being read by another process"):
        quiet_prepare(src, data, force=True)
    assert open_store(data).manifest["content_digest"] == before
    reader.close()
    with run_lock(data, "alexnet prepare"):  # and a reader that comes while a prepare writes is told who
        with pytest.raises(UserError, match=r"store is in use by 'alexnet prepare' \(pid \d+"):
            open_store(data, hold=True)
    # killed part-way: the old store is whole and readable; the rebuild resumes beside it
    prepare_killed_mid_run(src, data, chunks=1, force=True, workers=0, chunk_size=8, image_size=32)
    assert open_store(data, hold=True).manifest["content_digest"] == before
    assert (tmp_path / "d" / ".store.rebuild" / "prepare-progress.npz").is_file()
    said = []
    result = quiet_prepare(src, data, force=True, chunk_size=8, image_size=32, log=said.append)
    assert any("resuming an interrupted prepare" in line for line in said)
    assert result.store.manifest["content_digest"] == before  # the same images: the same store
    assert sorted(p.name for p in data.parent.iterdir()) == ["src", "store"]


def test_batches_read_with_pread_are_the_memory_maps_rows(store):
    split = open_store(store).split("train")
    assert split.rows is not None
    for indices in (np.arange(len(split)), np.array([5, 6, 7, 0, 30, 31, 2]), np.array([3])):
        np.testing.assert_array_equal(split.read(indices), np.take(split.images, indices, axis=0))


@pytest.mark.slow
def test_a_store_file_truncated_under_a_running_run_ends_in_one_line_and_an_ended_log(tmp_path):
    from alexnet.training import train

    data = make_store(tmp_path / "d")
    images = data / "train_images.npy"

    def log(line: str) -> None:
        if line.startswith("epoch 1:"):
            os.truncate(images, images.stat().st_size // 2)  # what 'cp' over it, or an old prepare, does first

    with pytest.raises(UserError, match="train_images.npy (changed on disk|ends before its rows)"):
        train(TINY.replace(epochs=2), data, tmp_path / "run", show_progress=False, log=log)
    ending = (tmp_path / "run" / "log.txt").read_text().splitlines()[-1]
    assert "failed: " in ending and "train_images.npy" in ending


# --- 3. diagnostics kept -----------------------------------------------------------------------


def _damage(store: Path, split: str, images: list[int]) -> None:
    """Flip bytes in the middle of these images' JPEG payloads (their CRC-32 no longer matches)."""
    index = np.load(store / jpeg.index_file(split))
    for i in images:
        part, offset, length, _ = (int(v) for v in index[i])
        path = store / jpeg.part_dir(split) / jpeg.part_name(part)
        data = bytearray(path.read_bytes())
        for k in range(offset + length // 2, offset + length // 2 + 8):
            data[k] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.slow
def test_skipped_damaged_images_are_counted_where_a_person_looks(tmp_path, capsys):
    write_image_folder(tmp_path / "src")
    data = quiet_prepare(tmp_path / "src", tmp_path / "store", encoding="jpeg").store.path
    _damage(data, "train", list(range(0, 36, 2)))
    _damage(data, "val", [0])
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *FLAGS]) == 0
    out = capsys.readouterr()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = metrics[0]["skipped_images"]
    assert skipped >= 1 + 8  # the damaged val image, and at least 8 of the 18 damaged ones in the 32 trained
    log = (run / "log.txt").read_text()
    assert f"; {skipped} damaged images skipped" in log and f"finished: 1 epoch; {skipped} damaged images" in log
    assert f"{skipped} damaged images skipped (see metrics.jsonl)" in out.out
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_images"] == 1


def test_a_windowed_shuffle_with_a_batch_near_the_data_size_is_a_user_error(tmp_path, capsys):
    data = make_store(tmp_path / "d", per_class=30)  # 66 training images: one whole block of 64
    flags = FLAGS[:FLAGS.index("--batch-size-per-device")] + FLAGS[FLAGS.index("--epochs"):]
    _fails(["train", str(data), "--out", str(tmp_path / "run"), *flags, "--batch-size-per-device", "65",
            "--shuffle-window-images", "1000"], capsys,
           "deals whole blocks of 64 images, 64 of the 66 .*lower --batch-size-per-device to 64")
    assert not (tmp_path / "run").exists()


def test_small_cases_say_what_is_wrong_and_what_to_do(store, tmp_path, capsys):
    from alexnet.tensorboard import TensorBoardWriter
    from alexnet.torchvision_alexnet import read_weights

    # a zero length in a JPEG index is not "negative"
    write_image_folder(tmp_path / "src", per_class=4)
    data = quiet_prepare(tmp_path / "src", tmp_path / "jpg", encoding="jpeg").store.path
    index = np.load(data / "train_index.npy")
    index[1, 2] = 0
    np.save(data / "train_index.npy", index)
    with pytest.raises(UserError, match=r"holds a zero length \(image 1\)"):
        open_store(data)
    # RUN/tensorboard that is a file
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").write_text("")
    with pytest.raises(UserError, match="tensorboard is a file, where --tensorboard writes its folder of events; "
                                        "move or delete it"):
        TensorBoardWriter(tmp_path / "run")
    # torchvision's weights as safetensors are read as such, not refused as an unknown kind of file
    from safetensors.torch import save_file

    weights = {"features.0.weight": torch.randn(4, 3, 11, 11), "classifier.6.weight": torch.randn(10, 4096)}
    save_file(weights, tmp_path / "tv.safetensors")
    assert all(torch.equal(read_weights(tmp_path / "tv.safetensors")[k], v) for k, v in weights.items())
    _fails(["import-torchvision", str(tmp_path / "tv.safetensors"), "--out", str(tmp_path / "tv.pt")], capsys,
           "is not torchvision's AlexNet: torchvision's AlexNet has 'features.0.bias'")
