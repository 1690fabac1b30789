"""Atomic writes: the old file or the whole new one, never a part, and no temporary file left."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from alexnet.atomic import atomic_save_npy, atomic_savez, atomic_write, atomic_write_bytes, atomic_write_json, stale_temporaries


def test_round_trips_read_back_by_the_standard_readers(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    atomic_save_npy(tmp_path / "a.npy", np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(6).reshape(2, 3))
    atomic_savez(tmp_path / "a.npz", m=np.eye(2))
    with np.load(tmp_path / "a.npz") as z:
        np.testing.assert_array_equal(z["m"], np.eye(2))
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"0123456789")  # the folder is made
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"0123456789"


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"v": 1})

    def half_then_fail(f):
        f.write(b'{"v": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    with pytest.raises(ValueError):
        atomic_write_json(path, {"v": float("nan")})  # not JSON: refused, not written
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_stale_temporaries_match_the_names_written(tmp_path, monkeypatch):
    path = tmp_path / "f.npy"
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(os, "unlink", lambda p: None)  # as if killed before the cleanup
    with pytest.raises(KeyboardInterrupt):
        atomic_save_npy(path, np.zeros(3))
    monkeypatch.undo()
    (stale,) = stale_temporaries(path)
    assert stale.parent == tmp_path and stale.name.startswith(".f.npy.") and stale.suffix == ".tmp"


def test_the_temporaries_of_dead_processes_are_swept_and_those_of_live_ones_kept(tmp_path):
    """A SIGKILLed writer leaves ``.NAME.PID.TOKEN.tmp``; the next owner of the folder removes it."""
    import subprocess
    import sys

    from alexnet.atomic import sweep_dead_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: no process has this pid now (unless reused within the test)
    names = {f".curves.png.{dead_pid}.0a1b2c3d.tmp": False, f".last.pt.{os.getpid()}.0a1b2c3d.tmp": True,
             ".notes.txt.tmp": True, "curves.png": True}  # ours, a stranger's hidden file, a real file
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sweep_dead_temporaries(tmp_path) == [f".curves.png.{dead_pid}.0a1b2c3d.tmp"]
    assert {p.name for p in tmp_path.iterdir()} == {n for n, kept in names.items() if kept}


def test_a_full_disk_names_the_file_and_the_cli_says_what_to_do(tmp_path):
    import errno

    from alexnet.cli import _os_error

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write() says: no file named

    with pytest.raises(OSError) as raised:
        atomic_write(tmp_path / "last.pt", full)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "last.pt")
    assert _os_error(raised.value) == f"{tmp_path / 'last.pt'}: no space left on device; free some space, or write somewhere else"
    assert not list(tmp_path.iterdir())
