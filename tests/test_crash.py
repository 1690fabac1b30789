"""Nothing lost: SIGKILL at named points of training, then resume, ends bit-identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import checkpoint

pytestmark = pytest.mark.slow  # each test runs the CLI in new processes, most of them killed at named points

FLAGS = ["--stem", "small", "--width", "0.125", "--crop-size", "28", "--batch-size-per-device", "8",
         "--epochs", "3", "--loader-workers", "1", "--checkpoint-every-steps", "2", "--quiet", "--deterministic"]


def run_cli(*args: str, kill_at: str | None = None, signal: str = "SIGKILL") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALEXNET_KILL_SIGNAL": signal}
    env.pop("ALEXNET_KILL_AT", None)
    if kill_at:
        env["ALEXNET_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "alexnet.cli", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def store_dir(shared_store) -> Path:
    return shared_store(per_class=12, size=40)


def test_kill_and_resume_is_bit_identical(store_dir, tmp_path):
    ref = run_cli("train", str(store_dir), "--out", str(tmp_path / "ref"), *FLAGS)
    assert ref.returncode == 0, ref.stderr
    run = str(tmp_path / "run")
    kills = ["step:3", "checkpoint-write:2", "evaluate:1", "metrics-append:1", "step:5", "checkpoint-write:3"]
    first = True
    for kill_at in kills:
        args = ["train", str(store_dir), "--out", run, *FLAGS] + ([] if first else ["--resume"])
        result = run_cli(*args, kill_at=kill_at)
        assert result.returncode == -9, f"{kill_at}: expected SIGKILL, got {result.returncode}: {result.stderr[-500:]}"
        first = False
        checkpoint.load(Path(run) / "last.pt")  # always a complete, readable checkpoint
    done = run_cli("train", str(store_dir), "--out", run, *FLAGS, "--resume")
    assert done.returncode == 0, done.stderr
    a = checkpoint.load(tmp_path / "ref" / "last.pt")["model"]
    b = checkpoint.load(Path(run) / "last.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    epochs = [line.split('"epoch": ')[1].split(",")[0] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    assert epochs == ["1", "2", "3"]


def test_user_errors_are_one_line(store_dir, tmp_path):
    cases = [
        (["train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "prepare"),
        (["train", str(store_dir), "--out", str(tmp_path / "r"), "--lr", "abc"], "lr"),
        (["train", str(store_dir), "--out", str(tmp_path / "r"), "--towers", "3"], "towers"),
        (["train", str(store_dir), "--out", str(tmp_path / "r2"), "--resume", *FLAGS[:8]], "nothing to resume"),
        (["evaluate", str(tmp_path / "missing.pt"), str(store_dir)], "not found"),
        (["predict", str(store_dir / "manifest.json"), "x.png"], "checkpoint"),
    ]
    for args, words in cases:
        result = run_cli(*args)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert words in last, (args, result.stderr)


def test_nonfinite_loss_stops_and_keeps_checkpoint(store_dir, tmp_path):
    base = ["--stem", "small", "--width", "0.125", "--crop-size", "28", "--batch-size-per-device", "8",
            "--epochs", "1", "--loader-workers", "1", "--quiet", "--lr", "1e30", "--checkpoint-every-steps", "1"]
    blown = run_cli("train", str(store_dir), "--out", str(tmp_path / "stop"), *base)
    assert blown.returncode == 2, blown.stderr
    last = blown.stderr.strip().splitlines()[-1]
    assert "non-finite" in last and "step" in last and "Traceback" not in blown.stderr
    saved = checkpoint.load(tmp_path / "stop" / "last.pt")
    assert all(np.isfinite(t.numpy()).all() for t in saved["model"].values())
    skipped = run_cli("train", str(store_dir), "--out", str(tmp_path / "skip"), *base, "--on-nonfinite", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped" in skipped.stderr + skipped.stdout
    weights = checkpoint.load(tmp_path / "skip" / "last.pt")["model"]
    assert all(np.isfinite(t.numpy()).all() for t in weights.values())


def test_sigterm_checkpoints_where_it_arrives_and_the_resume_ends_bit_identical(store_dir, tmp_path):
    """A scheduler's SIGTERM at step 5 (mid-epoch): the run writes last.pt at that step, says how to go
    on, exits 143; resumed, it ends with the weights of a run never stopped."""
    ref = run_cli("train", str(store_dir), "--out", str(tmp_path / "ref"), *FLAGS)
    assert ref.returncode == 0, ref.stderr
    run = str(tmp_path / "run")
    stopped = run_cli("train", str(store_dir), "--out", run, *FLAGS, kill_at="step:5", signal="SIGTERM")
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (f"alexnet train: SIGTERM: stopped at epoch 2, step 2 (global step 5); "
                                                       f"{run}/last.pt holds it: add --resume to go on")
    assert checkpoint.load(Path(run) / "last.pt")["progress"]["global_step"] == 5
    done = run_cli("train", str(store_dir), "--out", run, *FLAGS, "--resume")
    assert done.returncode == 0, done.stderr
    a, b = (checkpoint.load(Path(r) / "last.pt")["model"] for r in (tmp_path / "ref", run))
    assert all(torch.equal(a[name], b[name]) for name in a)
    log = [line[20:] for line in (Path(run) / "log.txt").read_text().splitlines()]  # without the times
    ends = [line for line in log if line.startswith(("stopped", "finished", "failed"))]
    assert ends == [f"stopped at epoch 2, step 2 (global step 5); {run}/last.pt holds it: add --resume to go on",
                    "finished: 3 epochs"], log
