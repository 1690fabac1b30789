"""One owner per folder: a second process is refused in one line; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alexnet.data import open_store, prepare_store
from alexnet.errors import UserError
from alexnet.runlock import LOCK_FILE, run_lock
from helpers import make_tree

REPO = Path(__file__).resolve().parents[1]

# A process that holds DIR until its stdin closes (or it is killed).
HOLDER = textwrap.dedent("""
    import sys
    from alexnet.runlock import run_lock
    with run_lock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        sys.stdin.read()
""")


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ALEXNET_KILL_AT", None)
    return env


def _holder(folder: Path, command: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def _alexnet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=120)


def test_second_owner_in_one_process_is_refused_and_the_lock_file_goes(tmp_path):
    folder = tmp_path / "run"
    with run_lock(folder, "alexnet train") as lock:
        assert lock.note is None
        held = json.loads((folder / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() and held["command"] == "alexnet train"
        with pytest.raises(UserError, match=rf"is in use by 'alexnet train' \(pid {os.getpid()} on .*, since .*\); "
                                            "wait for it or choose another --out"):
            with run_lock(folder, "alexnet train"):
                pass
    assert not (folder / LOCK_FILE).exists()
    with run_lock(folder, "alexnet train") as again:  # free again
        assert again.note is None


def test_an_exception_releases_the_lock_and_an_unused_new_folder_is_removed(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "new", "alexnet prepare"):
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        with run_lock(tmp_path / "file", "alexnet prepare"):
            pass


@pytest.mark.slow
def test_second_prepare_process_is_refused_in_one_line_exit_2(tmp_path):
    source = make_tree(tmp_path / "src", per_class=2, val_per_class=1)
    out = tmp_path / "store"
    holder = _holder(out, "alexnet prepare")
    try:
        second = _alexnet("prepare", str(source), str(out), "--image-size", "8", "--workers", "0", "--quiet")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"is in use by 'alexnet prepare' (pid {holder.pid} on " in lines[0]
        assert "choose another OUT folder" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written by the refused one
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    prepare_store(source, out, image_size=8, workers=0, progress_bar=False, log=lambda s: None)  # free now
    assert len(open_store(out).split("train")) == 4
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow  # a second Python process that imports torch
def test_lock_of_a_sigkilled_process_is_taken_over_with_a_note(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder, "alexnet train")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert (folder / LOCK_FILE).exists()  # left behind, but its flock died with the process
    notes = []
    with run_lock(folder, "alexnet train", log=notes.append) as lock:
        assert lock.note == notes[0]
        assert f"'alexnet train' (pid {holder.pid} on " in lock.note and "no longer running" in lock.note
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists()


@pytest.mark.slow  # a second Python process that imports torch
def test_prepare_into_a_folder_whose_owner_was_sigkilled_takes_it_over_with_a_note(tmp_path, capsys):
    source = make_tree(tmp_path / "src", per_class=2, val_per_class=1)
    out = tmp_path / "store"
    holder = _holder(out, "alexnet prepare")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    prepare_store(source, out, image_size=8, workers=0, progress_bar=False, log=lambda s: None)
    assert f"note: took over {out / LOCK_FILE}: 'alexnet prepare' (pid {holder.pid} on " in capsys.readouterr().err
    assert len(open_store(out).split("train")) == 4
    assert not (out / LOCK_FILE).exists()


def test_without_flock_a_pid_file_guards_the_folder_and_says_so(tmp_path, monkeypatch):
    import socket

    from alexnet import runlock

    monkeypatch.setattr(runlock, "fcntl", None)  # as on a system or file system without flock
    folder = tmp_path / "run"
    folder.mkdir()
    notes = []
    with run_lock(folder, "alexnet train", log=notes.append):
        assert "flock) is unavailable" in notes[0]
        with pytest.raises(UserError, match=rf"in use by 'alexnet train' \(pid {os.getpid()} on "):
            with run_lock(folder, "alexnet train", log=notes.append):
                pass
    assert not (folder / LOCK_FILE).exists()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    (folder / LOCK_FILE).write_text(json.dumps(dict(command="alexnet train", pid=dead, host=socket.gethostname(),
                                                    started=0.0)))
    with run_lock(folder, "alexnet train", log=notes.append) as lock:
        assert f"(pid {dead} on " in lock.note and "no longer running" in lock.note
