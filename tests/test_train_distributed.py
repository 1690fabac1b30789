"""Data and tower parallelism through the real training entry point (section 3.2; docs/distributed.md).

Every rank is a CPU process that gets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and calls :func:`alexnet.training.train`, which joins a gloo group on
127.0.0.1. The reference is one process on one device with the same *global* batch:
rank r of R replicas takes positions r, r + R, ... of each epoch's permutation, so the R
batches of a step hold exactly the images of the single process's batch, and DDP's average
of the R per-replica mean gradients is the gradient of the mean loss over them. Augmentation
and dropout are off, so every run computes the same steps up to float rounding.

Each rank also records, for the test to check afterwards: every file it opened for writing
or renamed inside the run directory (an audit hook), the number of validation images each
``evaluate`` counted, and (tower parallel) whether both towers of a replica got the same batch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from alexnet import checkpoint
from alexnet.config import TrainConfig
from alexnet.data import open_store
from alexnet.data.loader import Loader
from alexnet.errors import UserError
from alexnet.evaluate import evaluate
from alexnet.speed.levers import triton_runs_on
from alexnet.trained import load_member
import helpers as _ranks  # set_rank_env, start: the rank-spawning helpers

pytestmark = pytest.mark.slow  # every test trains on several gloo ranks, or resumes what they wrote

# No augmentation, no dropout: runs on different layouts compute the same steps.
EXACT = dict(stem="small", width=0.125, crop_size=28, loader_workers=1, device="cpu", epochs=2,
             init="he", input_scale=1 / 255,  # a tiny net that learns within 8 steps
             dropout=0.0, random_crop=False, flip=False, pca_lighting_std=0.0)
GLOBAL_BATCH = 8
TRAIN_PER_CLASS, VAL_PER_CLASS, CLASSES = 13, 5, 3  # 39 training images: 4 steps of 8; 15 val (odd)


@pytest.fixture(scope="module")
def store_dir(shared_store) -> Path:
    return shared_store(classes=CLASSES, per_class=TRAIN_PER_CLASS + VAL_PER_CLASS, val_per_class=VAL_PER_CLASS)


# ---------------------------------------------------------------- ranks


def _watch_writes(run_dir: Path, record: list) -> None:
    """Record every open-for-writing, rename, removal and mkdir of a path inside ``run_dir``."""
    root = os.path.realpath(run_dir)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path) -> bool:
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False  # a file descriptor
        return real == root or real.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & write_flags
            if writes and inside(path):
                record.append(f"open {path}")
        elif event in ("os.rename", "os.remove", "os.mkdir") and inside(args[0]):
            record.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def _check_tower_inputs(mismatches: list) -> None:
    """Count forward calls in which the towers of one replica were given different batches."""
    import torch.distributed as dist

    from alexnet.towers import TowerParallelAlexNet

    forward = TowerParallelAlexNet.forward

    def checked(self, x):
        xs = [torch.empty_like(x) for _ in range(self.num_towers)]
        dist.all_gather(xs, x.contiguous(), group=self.tower_group)
        if not all(torch.equal(xs[0], other) for other in xs):
            mismatches.append(1)
        return forward(self, x)

    TowerParallelAlexNet.forward = checked


def _rank(rank: int, world_size: int, port: int, config: TrainConfig, data: Path, run_dir: Path, resume: bool,
          kill_at: str, reports: Path) -> None:
    _ranks.set_rank_env(rank, world_size, port)
    if kill_at:
        os.environ["ALEXNET_KILL_AT"] = kill_at
    import alexnet.training.loop as train_module
    from alexnet.distributed import cleanup

    report = dict(writes=[], val_images=[], tower_mismatches=[], log=[])
    _watch_writes(run_dir, report["writes"])
    _check_tower_inputs(report["tower_mismatches"])
    counted = train_module.evaluate

    def evaluate_and_count(*args, **kwargs):
        result = counted(*args, **kwargs)
        report["val_images"].append(result["images"])
        return result

    train_module.evaluate = evaluate_and_count
    try:
        train_module.train(config, data, run_dir, resume=resume, show_progress=False, log=report["log"].append)
    finally:
        cleanup()
    report["tower_mismatches"] = len(report["tower_mismatches"])
    (reports / f"rank{rank}.json").write_text(json.dumps(report))


def run_ranks(world_size: int, config: TrainConfig, data: Path, run_dir: Path, *, resume: bool = False,
              kill_at: str = "") -> list[dict]:
    """``train`` on ``world_size`` processes; returns each rank's report (None for a killed rank)."""
    reports = run_dir.parent / f"{run_dir.name}-reports"
    reports.mkdir(exist_ok=True)
    for old in reports.glob("rank*.json"):
        old.unlink()
    try:
        _ranks.start(_rank, world_size, config, data, run_dir, resume, kill_at, reports)
    except mp.ProcessExitedException:
        if not kill_at:
            raise
    return [json.loads(p.read_text()) if (p := reports / f"rank{r}.json").exists() else None
            for r in range(world_size)]


# ---------------------------------------------------------------- checks


def assert_same_weights(run: Path, reference: Path, atol: float = 1e-5) -> None:
    got, expected = checkpoint.load(run / "last.pt"), checkpoint.load(reference / "last.pt")
    for part in ("model", "velocity"):
        assert list(got[part]) == list(expected[part]), part
        for name, tensor in expected[part].items():
            torch.testing.assert_close(got[part][name], tensor, rtol=0, atol=atol, msg=f"{part} {name}")
    assert got["lrs"] == expected["lrs"]
    for key in ("epoch", "step_in_epoch", "global_step"):
        assert got["progress"][key] == expected["progress"][key], key


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(run: Path, reference: Path) -> None:
    got, expected = read_metrics(run), read_metrics(reference)
    assert [m["epoch"] for m in got] == [m["epoch"] for m in expected]
    for g, e in zip(got, expected):
        for key in ("train_loss", "train_top1_error", "val_top1_error", "val_top5_error", "lr"):
            assert g[key] == pytest.approx(e[key], rel=1e-5, abs=1e-6), (g["epoch"], key)
        assert g["global_step"] == e["global_step"]


def assert_only_rank0_writes(reports: list[dict], run: Path) -> None:
    assert reports[0]["writes"], "the audit hook saw no writes on rank 0"
    for r, report in enumerate(reports[1:], 1):
        assert report["writes"] == [], f"rank {r} wrote into the run directory: {report['writes'][:3]}"
        assert report["log"] == [], f"rank {r} logged: {report['log'][:2]}"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "curves.png", "last.pt", "log.txt",
                                                     "metrics.jsonl"]


def val_image_count(store: Path) -> int:
    return len(open_store(store).split("val"))


@pytest.fixture(scope="module")
def reference(store_dir, tmp_path_factory) -> Path:
    """One process, one device, the grouped two-tower model, batch 8: what every layout must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert name not in os.environ, f"{name} is set: the reference must run as a single process"
    from alexnet.training import train

    train(TrainConfig(**EXACT, batch_size_per_device=GLOBAL_BATCH), store_dir, run, show_progress=False,
          log=lambda s: None)
    return run


# ---------------------------------------------------------------- tests


def test_data_parallel_matches_one_process_with_the_global_batch(store_dir, reference, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(**EXACT, batch_size_per_device=GLOBAL_BATCH // 2)
    reports = run_ranks(2, config, store_dir, run)
    assert_same_weights(run, reference)
    assert_same_metrics(run, reference)
    assert_only_rank0_writes(reports, run)
    # Validation: each rank counts its shard, the counts are summed: every image exactly once.
    assert [r["val_images"] for r in reports] == [[val_image_count(store_dir)] * 2] * 2
    # ... and the reduced error is the error of the final weights over the whole split, in one process.
    store = open_store(store_dir)
    val = evaluate([load_member(str(run / "last.pt"), torch.device("cpu"))],
                   Loader(store.split("val"), 4, shuffle=False, seed=0, drop_last=False, workers=0))
    assert read_metrics(run)[-1]["val_top1_error"] == pytest.approx(val["top1_error"], abs=1e-12)
    assert read_metrics(run)[-1]["val_top5_error"] == pytest.approx(val["top5_error"], abs=1e-12)


@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="needs triton's interpreter (TRITON_INTERPRET=1)")
def test_data_parallel_with_the_one_pass_update_matches_one_process(store_dir, reference, tmp_path):
    """--step-kernels fused-sgd under DDP: the flat gradient buffers take DDP's averaged gradients."""
    run = tmp_path / "run"
    config = TrainConfig(**EXACT, batch_size_per_device=GLOBAL_BATCH // 2, step_kernels=("fused-sgd",))
    run_ranks(2, config, store_dir, run)
    assert_same_weights(run, reference)
    assert_same_metrics(run, reference)


@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="needs triton's interpreter (TRITON_INTERPRET=1)")
def test_data_parallel_forward_on_the_updates_bf16_weights_is_autocasts(store_dir, tmp_path):
    """--step-kernels bf16-weights under DDP: the layers read the copies, DDP still averages the
    float32 gradients they hand back, and the run is the same, bit for bit, as with autocast's casts."""
    config = TrainConfig(**{**EXACT, "epochs": 1}, batch_size_per_device=GLOBAL_BATCH // 2, precision="bf16",
                         step_kernels=("fused-sgd",))
    run_ranks(2, config, store_dir, tmp_path / "autocast")
    run_ranks(2, config.replace(step_kernels=("fused-sgd", "bf16-weights")), store_dir, tmp_path / "copies")
    assert_same_weights(tmp_path / "copies", tmp_path / "autocast", atol=0)
    assert read_metrics(tmp_path / "copies") == [
        {**m, "images_per_s": c["images_per_s"], "epoch_seconds": c["epoch_seconds"]}
        for m, c in zip(read_metrics(tmp_path / "autocast"), read_metrics(tmp_path / "copies"), strict=True)]


def test_tower_parallel_matches_the_grouped_model(store_dir, reference, tmp_path):
    """Two ranks, one tower each (section 3.2), one replica with the whole batch."""
    run = tmp_path / "run"
    reports = run_ranks(2, TrainConfig(**EXACT, batch_size_per_device=GLOBAL_BATCH, tower_parallel=True),
                        store_dir, run)
    assert_same_weights(run, reference)
    assert_same_metrics(run, reference)
    assert_only_rank0_writes(reports, run)
    assert [r["tower_mismatches"] for r in reports] == [0, 0]
    assert [r["val_images"] for r in reports] == [[val_image_count(store_dir)] * 2] * 2


def test_two_replicas_of_two_towers_match_one_process(store_dir, reference, tmp_path):
    """Four ranks: replica 0 on ranks (0, 1), replica 1 on (2, 3), half of the global batch each."""
    run = tmp_path / "run"
    reports = run_ranks(4, TrainConfig(**EXACT, batch_size_per_device=GLOBAL_BATCH // 2, tower_parallel=True),
                        store_dir, run)
    assert_same_weights(run, reference)
    assert_same_metrics(run, reference)
    assert_only_rank0_writes(reports, run)
    assert [r["tower_mismatches"] for r in reports] == [0] * 4
    assert [r["val_images"] for r in reports] == [[val_image_count(store_dir)] * 2] * 4


@pytest.fixture(scope="module")
def interrupted(store_dir, tmp_path_factory) -> Path:
    """A two-process data-parallel run killed in epoch 2 after its step-6 checkpoint (step 2 of 4)."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    config = TrainConfig(**EXACT, batch_size_per_device=GLOBAL_BATCH // 2, checkpoint_every_steps=2)
    reports = run_ranks(2, config, store_dir, run, kill_at="step:7")
    assert reports == [None, None]
    saved = checkpoint.load(run / "last.pt")["progress"]
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 2, 6)
    assert [m["epoch"] for m in read_metrics(run)] == [1]
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_resume_on_one_process_with_the_same_global_batch(store_dir, reference, interrupted, tmp_path):
    """Same global batch, half the ranks: the resumed run finishes exactly as the uninterrupted one."""
    from alexnet.training import train

    run = _copy(interrupted, tmp_path / "run")
    lines: list[str] = []
    train(TrainConfig(**EXACT, batch_size_per_device=GLOBAL_BATCH, checkpoint_every_steps=2), store_dir, run,
          resume=True, show_progress=False, log=lines.append)
    assert _resuming(lines).startswith(f"resuming {run} at epoch 2, step 2 (global step 6)")
    assert_same_weights(run, reference)
    # Epoch 2's training loss joins both ranks' sums of steps 1-2 with this process's of steps 3-4.
    assert_same_metrics(run, reference)


def test_resume_refuses_another_global_batch_and_names_the_fix(store_dir, interrupted, tmp_path):
    """Fewer processes with the same batch per device would halve the global batch (and so change
    the run): refused before anything in the run directory is touched, naming the flag that keeps it."""
    from alexnet.training import train

    run = _copy(interrupted, tmp_path / "run")
    before = _files(run)
    for per_device in (GLOBAL_BATCH // 2, 12):
        with pytest.raises(UserError, match=rf"global batch {GLOBAL_BATCH} -> {per_device} .*"
                                            rf"--batch-size-per-device {GLOBAL_BATCH}"):
            train(TrainConfig(**EXACT, batch_size_per_device=per_device, checkpoint_every_steps=2), store_dir, run,
                  resume=True, show_progress=False, log=lambda s: None)
    assert _files(run) == before


def _resuming(lines: list[str]) -> str:
    """The line saying where a run resumes (a note on the killed run's lock may come first)."""
    return next(line for line in lines if line.startswith("resuming"))


def _files(run: Path) -> list:
    """The run's files and their modification times, but for the lock a process takes to resume."""
    return sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir() if p.name != ".alexnet.lock")


def test_resume_as_towers_gives_both_towers_the_same_crops(store_dir, interrupted, tmp_path):
    """The data-parallel checkpoint resumed as one replica of two towers, random crops on.

    The ranks' saved augmentation generators belong to the old layout (one per replica); the
    two towers of the new replica must draw the same crops, or they would compute on different images.
    """
    run = _copy(interrupted, tmp_path / "run")
    saved = checkpoint.load(run / "last.pt")  # as if the interrupted run had drawn random crops all along
    checkpoint.save(run / "last.pt", {**saved, "config": {**saved["config"], "random_crop": True}})
    config = TrainConfig(**{**EXACT, "random_crop": True}, batch_size_per_device=GLOBAL_BATCH,
                         checkpoint_every_steps=2, tower_parallel=True)
    reports = run_ranks(2, config, store_dir, run, resume=True)
    assert [r["tower_mismatches"] for r in reports] == [0, 0]
    assert _resuming(reports[0]["log"]).startswith(f"resuming {run} at epoch 2, step 2")
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert reports[1]["writes"] == []
