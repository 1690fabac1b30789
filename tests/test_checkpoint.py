"""Checkpoints: atomic writes, refusal of code-carrying pickles, clear errors for bad files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from alexnet import checkpoint
from alexnet.errors import UserError
from alexnet.model import AlexNet

SMALL = dict(num_classes=4, stem="small", input_size=28, width=0.125)


def _payload(model: AlexNet, args: dict) -> dict:
    return dict(model_args=args, model=model.state_dict())


def test_round_trip(tmp_path):
    model = AlexNet(**SMALL)
    checkpoint.save(tmp_path / "c.pt", _payload(model, SMALL))
    loaded = checkpoint.load(tmp_path / "c.pt")
    assert loaded["format"] == checkpoint.FORMAT
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded["model"][name])


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, _payload(AlexNet(**SMALL), SMALL))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        checkpoint.load(path)
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        checkpoint.load(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an alexnet checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_that_carries_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(UserError, match="run code"):
        checkpoint.load(path)
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_RunsCode(), f)
    with pytest.raises(UserError):
        checkpoint.load(tmp_path / "evil.pkl")
    assert not (tmp_path / "PWNED").exists()


def test_other_architecture_or_class_count_is_one_clear_error(tmp_path):
    checkpoint.save(tmp_path / "c.pt", _payload(AlexNet(**SMALL), SMALL))
    saved = checkpoint.load(tmp_path / "c.pt")
    with pytest.raises(UserError, match="another class count"):
        checkpoint.load_model_state(AlexNet(**{**SMALL, "num_classes": 7}), saved["model"], "c.pt")
    with pytest.raises(UserError, match="different architecture"):
        checkpoint.load_model_state(AlexNet(**{**SMALL, "lrn": False, "towers": 1, "stem": "paper", "input_size": 224}),
                                    {"x": torch.zeros(1)}, "c.pt")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    first = AlexNet(**SMALL)
    checkpoint.save(path, _payload(first, SMALL))
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(UserError, match="No space left"):
        checkpoint.save(path, _payload(AlexNet(**SMALL), SMALL))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
