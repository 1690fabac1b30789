"""A prepare killed with SIGKILL never leaves a store that opens, and a rerun completes it identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from alexnet.data import open_store, prepare_store
from alexnet.data.progress import PROGRESS, Progress
from alexnet.errors import UserError

try:
    from tests.test_data_prepare import make_tree
except ImportError:
    from test_data_prepare import make_tree

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
def test_sigkill_mid_run_then_resume(tmp_path):
    src = make_tree(tmp_path / "src", classes=("a", "b", "c"), per_class=60, val_per_class=10)
    out = tmp_path / "store"
    code = textwrap.dedent(
        f"""
        from alexnet.data.prepare import prepare_store
        prepare_store({str(src)!r}, {str(out)!r}, image_size=24, chunk_size=4, workers=2,
                      checkpoint_seconds=0, progress_bar=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.monotonic() + 60
    try:
        while True:  # wait until the record says some chunks are done, then kill
            assert proc.poll() is None, "the run ended before it could be killed; make the data set larger"
            assert time.monotonic() < deadline
            progress = Progress.load(out / PROGRESS) if (out / PROGRESS).exists() else None
            if progress is not None and sum(d.sum() for d in progress.done.values()) >= 3:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    with pytest.raises(UserError, match="alexnet prepare"):
        open_store(out)
    for _ in range(200):  # the workers die with their parent
        if not processes_mentioning(str(out)):
            break
        time.sleep(0.01)
    assert not processes_mentioning(str(out))

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
