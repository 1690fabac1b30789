"""One owner per output folder: a run directory or a store is written by one process at a time.

Two ``alexnet train --out RUN`` (or two ``alexnet prepare SOURCE OUT``) on one folder would
interleave their files: one run's config.json beside the other's checkpoints, both runs' epochs
in one metrics.jsonl. :func:`run_lock` makes the second one stop before it writes anything:

* The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``DIR/.alexnet.lock``. The kernel releases it when
  the holder exits in any way, SIGKILL and power loss included, so a lock can never outlive its
  process. The file holds the owner's command, pid, host and start time, for the message the
  second process prints: ``RUN is in use by 'alexnet train' (pid 4242 on gpu1, since ...)``.
  Processes forked by the holder (prepare's decoding pool) share the lock until they exit too,
  so a folder is not handed over while orphaned workers still write into it.
* The holder removes the file when it is done (while still holding the lock; a process that
  opened the old file meanwhile notices that the path now names another file and starts
  over). A file found on entry therefore comes from a process that died holding it: its lock is
  free, it is taken over, and the caller gets a note naming the dead owner.
* The owner also holds ``flock(LOCK_EX)`` on the folder itself, and readers of a store (a
  training run, an evaluation) ``flock(LOCK_SH)`` on it (:func:`shared_lock`; nothing is written
  into the store for it): any number read together, and an owner (``prepare --force``, which
  replaces the store) is refused while one reads. A lock on the folder follows the folder, so a
  store swapped in whole by its rebuild is free to read at once.
* Where ``flock`` is unavailable (no ``fcntl`` module, or a file system that refuses it), the file
  is created exclusively instead (``O_EXCL``) and an owner is taken as alive when its pid runs
  on this host. That is weaker (a pid can be reused; another machine's pid cannot be checked),
  and the note says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from alexnet.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: the O_EXCL fallback below
    fcntl = None

LOCK_FILE = ".alexnet.lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)


@dataclass(frozen=True)
class Owner:
    """Who holds (or held) a lock, as its file says."""

    command: str = "another process"
    pid: int = 0
    host: str = "?"
    started: float = 0.0

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started)) if self.started else "?"
        return f"{self.command!r} (pid {self.pid} on {self.host}, since {since})"


@dataclass
class RunLock:
    """A held lock: ``note`` is set when a lock left by a dead process was taken over."""

    directory: Path
    path: Path
    note: str | None = None


def _me(command: str) -> Owner:
    return Owner(command=command, pid=os.getpid(), host=socket.gethostname(), started=time.time())


def _parse(text: str) -> Owner | None:
    try:
        value = json.loads(text)
        return Owner(str(value["command"]), int(value["pid"]), str(value["host"]), float(value["started"]))
    except (ValueError, KeyError, TypeError):
        return None


def _read_fd(fd: int) -> Owner | None:
    try:
        return _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except OSError:
        return None


def _write_fd(fd: int, owner: Owner) -> None:
    data = json.dumps(dict(command=owner.command, pid=owner.pid, host=owner.host, started=owner.started)).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data + b"\n", 0)
    os.fsync(fd)


def _in_use(directory: Path, owner: Owner | None, advice: str) -> UserError:
    who = owner.describe() if owner else "another process (it is starting up)"
    return UserError(f"{directory} is in use by {who}; {advice}")


def _stale_note(path: Path, owner: Owner | None) -> str | None:
    if owner is None:
        return None
    return f"took over {path}: {owner.describe()} held it and is no longer running"


def _flock(directory: Path, path: Path, me: Owner, advice: str) -> tuple[int, str | None] | None:
    """Hold the flock on ``path``: (fd, note); None when this file system has no flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _read_fd(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use(directory, owner, advice) from None
            if e.errno in NO_FLOCK:
                return None
            raise
        try:  # the previous owner may have removed the file between our open and our flock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        note = _stale_note(path, _read_fd(fd))
        _write_fd(fd, me)
        return fd, note


def _alive(owner: Owner) -> bool:
    if owner.host != socket.gethostname():
        return True  # cannot tell: assume it runs
    return pid_alive(owner.pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs; True when that cannot be told."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: ask the process table
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        try:
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process, or no way to ask
    return True


def _exclusive_file(directory: Path, path: Path, me: Owner, advice: str) -> str | None:
    """The fallback without flock: create ``path`` exclusively; returns the note for the caller."""
    note = f"file locking (flock) is unavailable on {directory}'s file system; it is guarded by {path} instead"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _parse(path.read_text(errors="replace")) if path.exists() else None
            if owner is not None and not _alive(owner):
                note += f"; {_stale_note(path, owner)}"
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if owner is None:
                raise UserError(f"{directory} is in use ({path} exists and names no owner); if no other alexnet "
                                f"process writes there, delete {path} and run again") from None
            raise _in_use(directory, owner, advice) from None
        try:
            _write_fd(fd, me)
        finally:
            os.close(fd)
        return note
    raise UserError(f"could not take {path}: other processes keep replacing it; {advice}")


def _folder_fd(directory: Path) -> int | None:
    """An fd of the folder ``directory`` to flock, or None where that cannot be had."""
    try:
        return os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def _lock_folder(directory: Path, mode: int) -> int | None:
    """Hold flock ``mode`` on the folder ``directory``: its fd, or None where folders cannot be
    locked; OSError (EWOULDBLOCK) while another process holds a lock that excludes it."""
    fd = _folder_fd(directory) if fcntl is not None else None
    if fd is None:
        return None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as e:
        readers = False
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) and mode == fcntl.LOCK_EX:
            try:  # a shared lock is had while only readers hold theirs
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                readers = True
            except OSError:
                pass
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            e.readers = readers
            raise
        return None  # this file system does not lock folders
    return fd


def shared_lock(directory: str | os.PathLike) -> int | None:
    """Hold a shared lock on the folder ``directory`` (a store) while it is read: the fd to close
    when done, or None where folders cannot be locked. Readers share it; an owner
    (:func:`run_lock`: ``prepare --force``) is refused meanwhile, and a reader that comes while
    one writes gets a one-line UserError naming it."""
    directory = Path(directory)
    try:
        return _lock_folder(directory, fcntl.LOCK_SH if fcntl is not None else 0)
    except OSError:
        path = directory / LOCK_FILE
        owner = _parse(path.read_text(errors="replace")) if path.is_file() else None
        raise _in_use(directory, owner, "wait for it to finish, then run this again") from None


@contextlib.contextmanager
def run_lock(
    directory: str | os.PathLike,
    command: str,
    *,
    advice: str = "wait for it or choose another --out",
    log: Callable[[str], None] | None = None,
) -> Iterator[RunLock]:
    """Hold ``directory`` (created if missing) for this process, as ``command``, until the block ends.

    A second owner gets a one-line :class:`UserError`: ``DIR is in use by 'alexnet train'
    (pid N on HOST, since TIME); ADVICE``. A lock left by a dead process is taken over; the
    note saying so is on the yielded :class:`RunLock` and passed to ``log`` (default: stderr).
    A folder this call created is removed again on the way out if it stayed empty.
    """
    directory = Path(directory).expanduser()
    say = log if log is not None else (lambda message: print(f"note: {message}", file=sys.stderr, flush=True))
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file, not a folder; give a folder")
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot make the folder {directory}: a file stands where a folder of its path should be") from None
    path = directory / LOCK_FILE
    me = _me(command)
    held = _flock(directory, path, me, advice) if fcntl is not None else None
    fd = None
    if held is not None:
        fd, note = held
    else:
        note = _exclusive_file(directory, path, me, advice)
    try:
        folder = _lock_folder(directory, fcntl.LOCK_EX) if fcntl is not None else None
    except OSError as e:  # the lock file is ours: only readers (or an owner of older days) hold the folder
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if fd is not None:
            os.close(fd)
        if getattr(e, "readers", False):
            raise UserError(f"{directory} is being read by another process (a training run or an evaluation); "
                            f"{advice}") from None
        raise _in_use(directory, None, advice) from None
    lock = RunLock(directory, path, note)
    if note:
        say(note)
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            # still holding the flock: nobody can be inside between our unlink and close; the folder
            # may have been swapped for a rebuilt one meanwhile, whose lock file is not ours
            if fd is None or os.path.samestat(os.fstat(fd), os.stat(path)):
                path.unlink()
        for held_fd in (fd, folder):
            if held_fd is not None:
                os.close(held_fd)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: a refused or failed first run leaves no folder behind


def holds_folder(parameter: str, command: str, *, advice: str = "wait for it or choose another --out"):
    """Decorator: the function runs under :func:`run_lock` on the folder given as its ``parameter``."""
    import functools
    import inspect

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[parameter]
            with run_lock(folder, command, advice=advice):
                return function(*args, **kwargs)

        return locked

    return decorate
