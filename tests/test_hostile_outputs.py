"""A user's mistakes with the commands that read a trained network and write something from it
(evaluate, export, import-torchvision, show, report): each ends in one line, and nothing the user
already had (a checkpoint, a recipe, an earlier export) is written over or lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet import checkpoint, trained
from alexnet.cli import main
from alexnet.model import AlexNet

SMALL = dict(num_classes=3, stem="small", input_size=28, width=0.125, in_channels=3)
CLASSES = ["class_0", "class_1", "class_2"]  # make_store's
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _payload(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return dict(model_args=dict(SMALL), model=AlexNet(**SMALL).state_dict(),
                config=dict(crop_size=28, subtract_mean=True, input_scale=1 / 64),
                data=dict(classes=list(CLASSES), image_size=32, channels=3, mean_image=torch.full((32, 32, 3), 100.0)))


def _run(folder: Path, metrics: list[dict] | None = None) -> Path:
    """A run folder as 'alexnet train' leaves it after one epoch: config, metrics, best.pt and last.pt."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"epochs": 2, "crop_size": 28}))
    rows = metrics if metrics is not None else [dict(epoch=1, train_loss=1.0, train_top1_error=0.5, val_top1_error=0.6,
                                                     val_top5_error=0.0, lr=0.01)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    checkpoint.save(folder / "best.pt", dict(_payload(), epoch=1))
    checkpoint.save(folder / "last.pt", dict(_payload(), progress=dict(epoch=1, step_in_epoch=0)))
    return folder


def _fails(argv: list[str], capsys, match: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and "internal error" not in err, err
    return err


@pytest.fixture(scope="module")
def store(shared_store) -> Path:
    return shared_store()


# --- nothing the user had is written over ----------------------------------------------------------


def test_report_and_show_never_write_over_a_checkpoint_or_a_recipe(tmp_path, capsys):
    run = _run(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    _fails(["report", str(run), "--out", str(run / "best.pt")], capsys, "the ending names the format")
    _fails(["report", str(run), "--out", str(run / "config.json")], capsys, "the ending names the format")
    _fails(["show", "filters", str(run), "--out", str(run / "last.pt")], capsys, "the ending names the format")
    # the right ending on a file of another kind: refused, the file kept
    (run / "notes.png").write_text("my notes, not an image\n")
    (run / "notes.html").write_bytes(b"PK\x03\x04 a zip, not a page")
    _fails(["show", "filters", str(run), "--out", str(run / "notes.png")], capsys, "is not a PNG image")
    _fails(["report", str(run), "--out", str(run / "notes.html")], capsys, "is not an HTML page")
    assert (run / "notes.png").read_text() == "my notes, not an image\n"
    assert {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith("notes")} == before
    # a file where a folder of the path should be is named, not a temporary file
    err = _fails(["show", "filters", str(run), "--out", str(run / "best.pt" / "f.png")], capsys, "is a file, not a folder")
    assert ".tmp" not in err
    _fails(["report", str(run), "--out", str(run / "best.pt" / "r.html")], capsys, "is a file, not a folder")


def test_an_out_that_is_a_folder_gets_the_default_name_inside_it(tmp_path, capsys):
    run = _run(tmp_path / "run")
    assert main(["show", "filters", str(run), "--out", str(tmp_path / "figures") + "/"]) == 0
    assert (tmp_path / "figures" / "filters.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "figures").is_file()
    assert main(["report", str(run), "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "report.html").read_text().startswith("<!DOCTYPE html>")
    # a figure written again over its own earlier file is fine
    assert main(["show", "filters", str(run), "--out", str(tmp_path / "figures" / "filters.png")]) == 0


def test_no_figure_report_or_export_goes_into_an_export_folder_even_when_named(tmp_path, capsys):
    run = _run(tmp_path / "run")
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    files = sorted(p.name for p in (tmp_path / "exp").iterdir())
    _fails(["show", "filters", str(run), "--out", str(tmp_path / "exp" / "f.png")], capsys, "inside the export folder")
    _fails(["export", str(run), "--out", str(tmp_path / "exp" / "sub")], capsys, "inside the export folder")
    _fails(["report", str(run), "--out", str(tmp_path / "exp")], capsys, "inside the export folder")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == files


def test_export_overwrite_that_fails_keeps_the_export_it_was_replacing(tmp_path, monkeypatch):
    import alexnet.export as export
    from alexnet.errors import UserError

    out = tmp_path / "exp"
    export.write_export(_payload(0), out, ["safetensors"], source="a.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_exporter(*args, **kwargs):
        raise UserError("the ONNX exporter failed")

    monkeypatch.setattr(export, "_require", lambda *modules: None)
    monkeypatch.setattr(export, "onnx_model", broken_exporter)
    with pytest.raises(UserError, match="exporter failed"):
        export.write_export(_payload(1), out, ["safetensors", "onnx"], source="b.pt", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # and the export still loads as the first network
    first = trained.load(out)["model"]
    assert all(torch.equal(first[k], v) for k, v in _payload(0)["model"].items())


# --- damaged or odd run folders give a page or one line ------------------------------------------


@pytest.mark.slow
def test_report_of_a_damaged_run_is_one_line_or_a_page_that_says_what_is_missing(tmp_path, capsys):
    run = _run(tmp_path / "list", metrics=[])
    (run / "config.json").write_text("[1, 2]")
    _fails(["report", str(run)], capsys, "not a recipe")
    # metrics of another version (no top-5, no lr), a row that is not a table: the page is still made
    rows = [dict(epoch=1, train_loss=1.0, val_top1_error=0.5), dict(epoch=2, train_loss=0.9, val_top1_error=float("nan"))]
    run = _run(tmp_path / "old", metrics=rows)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[1]\n\"text\"\n")
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "50.00% (epoch 1)" in page and "checkpoint shown</td><td>best.pt (epoch 1)" in page
    # best.pt cut short, last.pt whole: the page is made from last.pt and says why
    run = _run(tmp_path / "cut")
    (run / "best.pt").write_bytes((run / "last.pt").read_bytes()[:3000])
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "last.pt (after 1 epoch(s))" in page and "best.pt is not a readable checkpoint" in page
    # a file named .png that is not one is left out instead of drawn as a broken image
    run = _run(tmp_path / "png")
    (run / "fake.png").write_text("not an image")
    Image.new("RGB", (4, 4)).save(run / "real.png")
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<h2>real.png</h2>" in page and "fake.png" not in page


# --- import-torchvision ----------------------------------------------------------------------------


def _tv_like(**changes) -> dict:
    """torchvision's keys with small tensors: what is refused is refused before the shapes are compared."""
    names = ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4",
             "classifier.6"]
    state = {f"{n}.{k}": torch.zeros(3, 4) if k == "weight" else torch.zeros(3) for n in names for k in ("weight", "bias")}
    state.update(changes)
    return state


@pytest.mark.parametrize("content, match", [
    ({1: torch.zeros(1), 2: torch.zeros(1)}, "does not hold a state dict"),
    (_tv_like(**{"classifier.6.weight": torch.zeros(0, 4), "classifier.6.bias": torch.zeros(0)}), "not (classes, 4096)"),
    (_tv_like(**{"classifier.6.weight": torch.zeros(3, 4, 1)}), "classifier.6.weight is (3, 4, 1)"),
    (_tv_like(**{"features.0.weight": torch.full((3, 4), float("nan"))}), "NaN or infinite"),
    (_tv_like(**{"features.0.weight": torch.zeros(3, 4, dtype=torch.int64)}), "holds torch.int64 values"),
    ({"format": "alexnet-checkpoint", "version": 1, "model": {"x": torch.zeros(1)}}, "already an alexnet checkpoint"),
    (AlexNet(**SMALL).state_dict(), "this package's AlexNet"),
])
def test_import_torchvision_refuses_what_is_not_its_weights_in_one_line(tmp_path, capsys, content, match):
    src = tmp_path / "weights.pth"
    torch.save(content, src)
    _fails(["import-torchvision", str(src), "--out", str(tmp_path / "out.pt")], capsys, match)
    assert not (tmp_path / "out.pt").exists()


def test_import_torchvision_refuses_odd_outs_and_sizes_before_reading(tmp_path, capsys):
    src = tmp_path / "weights.pth"
    torch.save(_tv_like(), src)
    (tmp_path / "notes.txt").write_text("keep me\n")
    _fails(["import-torchvision", str(src), "--out", str(tmp_path / "notes.txt"), "--overwrite"], capsys,
           "is not a PyTorch file")
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"
    _fails(["import-torchvision", str(src), "--out", str(tmp_path / "notes.txt" / "x.pt")], capsys, "is a file, not a folder")
    _fails(["import-torchvision", str(src), "--out", str(tmp_path / "new") + "/"], capsys, "is a folder; name the checkpoint")
    _fails(["import-torchvision", str(src), "--out", str(tmp_path / "x.pt"), "--image-size", "99999"], capsys,
           "--image-size 99999 must be between 1 and")
    (tmp_path / "exp").mkdir()
    torch.save(_tv_like(), tmp_path / "exp" / "torchvision_alexnet.pth")
    _fails(["import-torchvision", str(tmp_path / "exp"), "--out", str(tmp_path / "x.pt")], capsys,
           "is a folder; name the weights file (.pth) in it")


# --- evaluate ----------------------------------------------------------------------------------


def test_evaluate_refuses_the_same_network_twice_and_names_the_checkpoint_of_a_run(tmp_path, store, capsys):
    run = _run(tmp_path / "run")
    other = tmp_path / "other.pt"
    checkpoint.save(other, _payload(seed=1))
    _fails(["evaluate", str(run), str(run / "best.pt"), str(store)], capsys, "is the same network as")
    _fails(["evaluate", str(run / "best.pt"), str(run / "last.pt"), str(store)], capsys, "identical weights")
    assert main(["evaluate", str(run), str(other), str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == [str(run), str(other)]
    assert main(["evaluate", str(run), str(store)]) == 0
    assert capsys.readouterr().out.startswith(f"{run} (best.pt, epoch 1), centre crop")


def test_every_reader_takes_an_export_folder_even_one_whose_name_is_not_utf8(tmp_path, store, capsys):
    """trained.load reads a safetensors export as it reads a run folder: show, evaluate, export, --init-from alike."""
    import os

    from alexnet.trained import load

    run = _run(tmp_path / "run")
    out = tmp_path / os.fsdecode(b"caf\xe9")  # Latin-1 'café': a name safetensors cannot open by path
    assert main(["export", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    exported, best = load(out), checkpoint.load(run / "best.pt")
    assert all(torch.equal(exported["model"][k], v) for k, v in best["model"].items())
    assert torch.equal(exported["data"]["mean_image"], best["data"]["mean_image"])
    assert main(["evaluate", str(out), str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 12
    assert main(["show", "filters", str(out), "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()


def test_a_failed_export_write_names_the_export_not_a_temporary_file(tmp_path, capsys, monkeypatch):
    run = _run(tmp_path / "run")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "exp" / ".model.safetensors.1.tmp"))

    monkeypatch.setattr("alexnet.export.atomic_write_bytes", disk_full)
    err = _fails(["export", str(run), "--out", str(tmp_path / "exp")], capsys, "could not write the export to")
    assert "No space left on device" in err and ".tmp" not in err


def test_a_data_set_named_where_the_network_goes_is_said_to_be_one(tmp_path, store, capsys):
    run = _run(tmp_path / "run")
    for argv in (["evaluate", str(store), str(run)], ["evaluate", str(store), str(store)],
                 ["show", "filters", str(store)], ["show", "neighbours", str(store), str(run)],
                 ["export", str(store), "--out", str(tmp_path / "exp")]):
        _fails(argv, capsys, "is a prepared data set, not a trained network")
    _fails(["export", str(run), "--out", ""], capsys, "--out is empty")
    assert not (tmp_path / "exp").exists()


def test_show_neighbours_refuses_a_figure_too_large_to_draw_before_any_work(tmp_path, capsys, monkeypatch):
    import alexnet.trained

    run = _run(tmp_path / "run")
    monkeypatch.setattr(alexnet.trained, "load_member", lambda *a, **k: pytest.fail("the network was loaded"))
    _fails(["show", "neighbours", str(run), str(tmp_path), "--images", "51"], capsys, "more than one figure can show")
    _fails(["show", "neighbours", str(run), str(tmp_path), "--neighbours", "5000"], capsys, "more than one figure can show")


def test_import_torchvision_class_names_file_may_start_with_a_byte_order_mark(tmp_path):
    from alexnet.commands.export import _read_classes

    names = tmp_path / "classes.txt"
    names.write_bytes("\ufeffant\r\nbee\r\n".encode("utf-8"))
    assert _read_classes(str(names), 2) == ["ant", "bee"]


def test_an_export_folder_without_its_description_is_called_unfinished(tmp_path, capsys):
    run = _run(tmp_path / "run")
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    (tmp_path / "exp" / "alexnet.json").unlink()  # as while it is written, or after a failed write
    _fails(["show", "filters", str(tmp_path / "exp")], capsys, "holds an unfinished export (no alexnet.json")
    _fails(["export", str(tmp_path / "exp"), "--out", str(tmp_path / "again")], capsys, "unfinished export")
