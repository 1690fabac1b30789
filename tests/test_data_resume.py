"""A prepare killed with SIGKILL never leaves a store that opens, and a rerun completes it identically."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet.data import open_store, prepare_store
from alexnet.data.progress import PROGRESS, Progress
from alexnet.errors import UserError
from helpers import make_tree, wait_for_orphans, prepare_killed_mid_run

ARGS = dict(image_size=24, chunk_size=4, progress_bar=False, log=lambda message: None)
REPO = Path(__file__).resolve().parent.parent


def processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and fork")
@pytest.mark.slow  # a prepare in its own process, killed with SIGKILL
def test_sigkill_mid_run_then_resume(tmp_path):
    src = make_tree(tmp_path / "src", classes=("a", "b", "c"), per_class=12, val_per_class=4)
    out = tmp_path / "store"

    def the_run_and_its_workers(pid: int) -> None:
        workers = processes_mentioning(str(out))
        assert pid in workers and len(workers) > 1

    prepare_killed_mid_run(src, out, image_size=24, chunk_size=4, workers=2, before_kill=the_run_and_its_workers)

    progress = Progress.load(out / PROGRESS)
    assert 3 <= sum(int(d.sum()) for d in progress.done.values()) < sum(len(d) for d in progress.done.values())
    with pytest.raises(UserError, match="alexnet prepare"):
        open_store(out)
    # The workers die with their parent (PR_SET_PDEATHSIG). The kernel has sent their SIGKILL by the time
    # the parent is reaped; how soon they are gone depends on the machine's load, so only a hang fails.
    wait_for_orphans(out)  # the workers share the folder's lock until they are gone

    resumed = prepare_store(src, out, workers=2, **ARGS)
    assert resumed.resumed_chunks >= 3
    clean = prepare_store(src, tmp_path / "clean", workers=0, **ARGS)
    for split in ("train", "val"):
        np.testing.assert_array_equal(resumed.store.split(split).images, clean.store.split(split).images)
        np.testing.assert_array_equal(resumed.store.split(split).labels, clean.store.split(split).labels)
    np.testing.assert_array_equal(resumed.store.mean_image, clean.store.mean_image)
    np.testing.assert_array_equal(resumed.store.pca_eigenvectors, clean.store.pca_eigenvectors)
    assert not (out / PROGRESS).exists()


def test_interrupted_finish_is_resumed(tmp_path, monkeypatch):
    """Killed after the skipped rows were filled, before the manifest: the rerun finishes the job."""
    src = make_tree(tmp_path / "src", per_class=6)
    (src / "train" / "a_bad.png").write_bytes(b"")  # outside class folders: listed, not decoded
    (src / "train" / "cat" / "0_bad.png").write_bytes(b"")  # skipped: its row is refilled
    from alexnet.data import prepare as prepare_module

    real = prepare_module.atomic_write_json

    def die_at_manifest(path, value):
        if path.name == "manifest.json":
            raise KeyboardInterrupt
        real(path, value)

    monkeypatch.setattr(prepare_module, "atomic_write_json", die_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(src, tmp_path / "store", workers=0, **ARGS)
    with pytest.raises(UserError):
        open_store(tmp_path / "store")
    monkeypatch.setattr(prepare_module, "atomic_write_json", real)
    finished = prepare_store(src, tmp_path / "store", workers=0, **ARGS)
    clean = prepare_store(src, tmp_path / "clean", workers=0, **ARGS)
    np.testing.assert_array_equal(finished.store.split("train").images, clean.store.split("train").images)
    assert len(finished.store.split("train")) == 12
    assert sorted(s["path"] for s in finished.skipped) == ["train/a_bad.png", "train/cat/0_bad.png"]


def test_changed_source_restarts_cleanly(tmp_path):
    src = make_tree(tmp_path / "src")
    out = tmp_path / "store"
    prepare_store(src, out, workers=0, **ARGS)
    os.unlink(out / "manifest.json")  # looks like an interrupted run ...
    (src / "train" / "cat" / "0.png").rename(src / "train" / "cat" / "renamed.png")  # ... of other data
    logged = []
    store = prepare_store(src, out, workers=0, **dict(ARGS, log=logged.append)).store
    assert any("afresh" in line for line in logged)
    assert len(store.split("train")) == 8
