"""A resume continues the same run or says why not (alexnet.training.resume), and the non-finite
guard runs the GPU's policy on the CPU (alexnet.training.step)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.training import NonFiniteError, read_metrics, train
from alexnet.training.step import GPU_SYNC_EVERY_STEPS, NonFiniteGuard, sync_interval
from helpers import QUIET, TINY, make_store


@pytest.fixture(scope="module")
def store(shared_store) -> Path:
    return shared_store(per_class=12)


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory) -> Path:
    """A one-epoch run, copied by each test that resumes it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(TINY, store, run, **QUIET)
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _files(run: Path) -> dict:
    """Every file of a run directory with its bytes, but for the lock a resuming process takes."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != ".alexnet.lock"}


@pytest.mark.parametrize("change, named", [
    (dict(init="paper"), "init 'he' -> 'paper'"),
    (dict(seed=1), "seed 0 -> 1"),
    (dict(schedule="milestones"), "schedule 'plateau' -> 'milestones'"),
    (dict(param_groups="original"), "param_groups 'paper' -> 'original'"),
    (dict(width=0.25), "width 0.125 -> 0.25"),
    (dict(pca_lighting_std=0.0), "pca_lighting_std 0.1 -> 0.0"),
    (dict(batch_size_per_device=8), "global batch 16 -> 8"),
    (dict(epochs=2, init="paper", seed=3), "init 'he' -> 'paper'; seed 0 -> 3"),
])
def test_a_change_that_alters_the_run_is_refused_and_touches_nothing(store, finished, tmp_path, change, named):
    run = _copy(finished, tmp_path / "run")
    before = _files(run)
    with pytest.raises(UserError, match="is a run of another recipe") as refused:
        train(TINY.replace(**{"epochs": 2, **change}), store, run, resume=True, **QUIET)
    assert named in str(refused.value) and "\n" not in str(refused.value)
    assert _files(run) == before


@pytest.mark.slow
def test_another_store_is_refused_and_a_copy_of_the_same_store_is_not(store, finished, tmp_path):
    other = make_store(tmp_path / "other", per_class=12, seed=5)  # other images, same shapes and classes
    run = _copy(finished, tmp_path / "run")
    with pytest.raises(UserError, match="data: another store"):
        train(TINY.replace(epochs=2), other, run, resume=True, **QUIET)
    moved = shutil.copytree(store, tmp_path / "moved")  # the same store elsewhere is the same data
    assert [m["epoch"] for m in train(TINY.replace(epochs=2), moved, run, resume=True, **QUIET)] == [1, 2]


def test_runtime_changes_are_accepted_said_and_recorded(store, finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    said: list[str] = []
    train(TINY.replace(epochs=2, loader_workers=0, checkpoint_every_steps=3, on_nonfinite="skip", tensorboard=True),
          store, run, resume=True, show_progress=False, log=said.append)
    for note in ("loader_workers 1 -> 0", "checkpoint_every_steps 0 -> 3", "epochs 1 -> 2"):
        assert any(note in line for line in said), (note, said)
    recorded = json.loads((run / "config.json").read_text())  # config.json tells the truth about the run
    assert (recorded["loader_workers"], recorded["checkpoint_every_steps"], recorded["epochs"]) == (0, 3, 2)
    assert checkpoint.load(run / "last.pt")["config"]["on_nonfinite"] == "skip"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # --tensorboard wrote the resumed epoch


def test_a_finished_run_says_so_and_trains_no_further(store, finished, tmp_path):
    """Nothing is written: a new --lr is not recorded in config.json for epochs it never trained."""
    run = _copy(finished, tmp_path / "run")
    before = _files(run)
    said: list[str] = []
    metrics = train(TINY.replace(lr=TINY.lr * 10), store, run, resume=True, show_progress=False, log=said.append)
    assert [m["epoch"] for m in metrics] == [1] and read_metrics(run) == metrics
    assert any("has finished 1 epoch; pass --epochs N with N > 1" in line for line in said), said
    assert not any("resuming" in s or "learning rate" in s for s in said), said
    assert _files(run) == before


def test_the_cli_refuses_a_changed_recipe_in_one_line_with_exit_2(store, finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    before = _files(run)
    code = main(["train", str(store), "--out", str(run), "--resume", "--epochs", "2", "--init", "paper", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "init 'he' -> 'paper'" in err[0]
    assert _files(run) == before


# --- the non-finite guard --------------------------------------------------------------------


def test_sync_interval_defaults_and_override():
    assert sync_interval(0, torch.device("cpu"), "stop") == 1
    assert sync_interval(0, torch.device("cuda", 0), "stop") == GPU_SYNC_EVERY_STEPS
    assert sync_interval(0, torch.device("cuda", 0), "skip") == 1
    assert sync_interval(7, torch.device("cpu"), "stop") == 7
    with pytest.raises(UserError, match="skip"):
        TINY.replace(on_nonfinite="skip", nonfinite_check_every_steps=4)


def test_guard_keeps_the_flag_until_the_verdict():
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    guard = NonFiniteGuard("skip", any_rank=lambda t: t, device=torch.device("cpu"), keeps=lambda: "")
    guard.observe(torch.tensor(1.0), model)
    assert guard.verdict(lambda: "step 1") is False
    guard.observe(torch.tensor(float("nan")), model)
    guard.observe(torch.tensor(1.0), model)  # a later finite step does not clear it
    assert guard.verdict(lambda: "step 3") is True and guard.verdict(lambda: "step 4") is False  # cleared once judged
    model.weight.grad[0, 0] = float("inf")
    stop = NonFiniteGuard("stop", any_rank=lambda t: t, device=torch.device("cpu"), keeps=lambda: "the run keeps")
    stop.observe(torch.tensor(1.0), model)
    with pytest.raises(NonFiniteError, match="at step 5; the run keeps"):
        stop.verdict(lambda: "step 5")


def test_the_gpu_interval_on_the_cpu_stops_at_the_first_synced_step(store, tmp_path):
    """lr 1e30 blows the weights up in step 1, so step 2's loss is not finite; read every 4 steps, the
    run stops at step 4, the first read, and says truthfully that no checkpoint exists yet."""
    every = 4
    config = TINY.replace(lr=1e30, batch_size_per_device=4, nonfinite_check_every_steps=every)
    with pytest.raises(NonFiniteError, match=rf"epoch 1, step {every} \(global step {every}\); no checkpoint"):
        train(config, store, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_checkpoint_never_holds_a_non_finite_step(store, tmp_path):
    """A checkpoint forces the read: with checkpoints every step the run stops at step 2 and keeps step 1's."""
    config = TINY.replace(lr=1e30, batch_size_per_device=4, nonfinite_check_every_steps=4, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteError, match="step 2 .*last.pt keeps the last good state"):
        train(config, store, tmp_path / "run", **QUIET)
    kept = checkpoint.load(tmp_path / "run" / "last.pt")
    assert kept["progress"]["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_a_run_directory_has_one_owner(store, finished, tmp_path, capsys):
    """While one process trains into RUN (here: holds its lock), a second is refused in one line."""
    from alexnet.runlock import run_lock

    run = _copy(finished, tmp_path / "run")
    before = _files(run)
    with run_lock(run, "alexnet train"):
        code = main(["train", str(store), "--out", str(run), "--resume", "--epochs", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is in use by 'alexnet train'" in err[0]
    assert _files(run) == before


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.pop("progress"), "no 'progress' section"),
    (lambda p: p["progress"].update(epoch=None, bogus=1), "'progress' section is damaged"),
    (lambda p: p["velocity"].update({"features.conv1.weight": torch.zeros(3)}), "velocities do not match"),
    (lambda p: p.update(lrs=[float("nan")]), "learning rates are damaged"),
    (lambda p: p["model"].update({"classifier.fc8.bias": torch.full((3,), float("inf"))}), "finite"),
])
def test_a_damaged_run_state_is_refused_in_one_line(store, finished, tmp_path, damage, says):
    run = _copy(finished, tmp_path / "run")
    payload = checkpoint.load(run / "last.pt")
    damage(payload)
    checkpoint.save(run / "last.pt", payload)
    with pytest.raises(UserError, match=says):
        train(TINY.replace(epochs=2), store, run, resume=True, **QUIET)


# --- stopping when asked (SIGTERM) ------------------------------------------------------------


def _asked_after(calls: int):
    asked = []

    def stop_requested() -> bool:
        asked.append(1)
        return len(asked) >= calls

    return stop_requested


@pytest.mark.parametrize("calls, stopped_at, every", [(3, 3, 0), (2, 4, 2), (6, 6, 0)])
@pytest.mark.slow
def test_a_run_asked_to_stop_checkpoints_and_resumes_to_the_uninterrupted_run(store, tmp_path, calls, stopped_at,
                                                                              every):
    """Asked at every synced step (every step on the CPU, or every 2nd) and after each epoch; the
    checkpoint it leaves resumes to the very weights of a run never stopped. 6 steps make an epoch,
    whose last step is not asked: the 6th ask comes after epoch 1, whose own checkpoint is kept."""
    from alexnet.training import Stopped

    config = TINY.replace(epochs=2, batch_size_per_device=4, nonfinite_check_every_steps=every)
    train(config, store, tmp_path / "whole", **QUIET)
    with pytest.raises(Stopped, match=f"global step {stopped_at}|end of epoch 1") as raised:
        train(config, store, tmp_path / "stopped", stop_requested=_asked_after(calls), **QUIET)
    assert "add --resume to go on" in str(raised.value)
    assert checkpoint.load(tmp_path / "stopped" / "last.pt")["progress"]["global_step"] == stopped_at
    train(config, store, tmp_path / "stopped", resume=True, **QUIET)
    whole, resumed = (checkpoint.load(tmp_path / r / "last.pt") for r in ("whole", "stopped"))
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    losses = [[m["train_loss"] for m in read_metrics(tmp_path / r)] for r in ("whole", "stopped")]
    assert losses[0] == losses[1] and len(losses[0]) == 2


@pytest.mark.parametrize("replicas, per_device, advice", [
    (2, 16, "keep 16 with --batch-size-per-device 8"),
    (3, 5, "16 does not split over 3 replicas: resume on 1, 2, 4, 8, 16 replica(s)"),
])
def test_another_world_size_is_told_the_batch_that_keeps_the_run(finished, store, replicas, per_device, advice):
    from alexnet.data import open_store
    from alexnet.training.layout import LayoutInfo
    from alexnet.training.recipe import store_identity
    from alexnet.training.resume import check_resume

    saved = checkpoint.load(finished / "last.pt")
    with pytest.raises(UserError, match=re.escape(f"global batch 16 -> {replicas * per_device} ") + ".*" + re.escape(advice)):
        check_resume(saved, TINY.replace(batch_size_per_device=per_device), LayoutInfo(replicas, replicas, 1, per_device),
                     store_identity(open_store(store)), "last.pt")


def test_an_error_line_of_a_process_of_a_run_says_which_rank_printed_it(monkeypatch, capsys):
    from alexnet.cli import _say_error

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    _say_error("alexnet train", "something is wrong", "run with --debug")
    assert capsys.readouterr().err == "rank 1 of 4: alexnet train: error: something is wrong (run with --debug)\n"
