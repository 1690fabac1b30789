"""Atomic file writes: a reader, or a rerun after a crash, sees the old file or the whole new one.

Every file that a crash must not leave half-written goes through :func:`atomic_write`: checkpoints
and run files (:mod:`alexnet.checkpoint`, :mod:`alexnet.training.run_dir`), the prepared store
(:mod:`alexnet.data.prepare`) and experiment results (:mod:`alexnet.experiments`). The bytes go to
a temporary file in the same folder (a rename across file systems would not be atomic), are
fsynced, then renamed over the target with ``os.replace``; the folder is fsynced last so that the
rename itself survives a power cut. A failure at any point removes the temporary file and leaves
the previous file as it was.

A folder of several files (an export, a rebuilt store) is replaced as a whole instead: built
beside the old one under another name, then swapped in (:func:`replace_folder`), so that a
reader, or a rerun after a crash, finds the old folder or the whole new one.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from alexnet.faults import kill_point
from alexnet.runlock import pid_alive


def _temporary(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def stale_temporaries(path: Path) -> list[Path]:
    """Temporary files beside ``path`` left by an interrupted atomic write of it (safe to delete)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The nearest existing parent of ``path`` when it is a file, not a folder (nothing can be
    written below it), else None."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def sweep_dead_temporaries(folder: Path, of: str = "*") -> list[str]:
    """Delete the temporary files and folders in ``folder`` (of the entry named ``of``, default
    any) of atomic writes whose process has died (a crash, SIGKILL); those of live processes are
    left alone. Returns the names deleted."""
    swept = []
    for tmp in Path(folder).glob(f".{of if of == '*' else glob.escape(of)}.*.tmp"):
        parts = tmp.name.split(".")  # "", name..., pid, token, "tmp"
        if len(parts) < 5 or not parts[-3].isdigit() or pid_alive(int(parts[-3])):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            swept.append(tmp.name)
        except OSError:
            pass
    return swept


def temporary_folder(target: Path) -> Path:
    """A new, empty folder beside ``target`` to build its replacement in (see :func:`replace_folder`)."""
    tmp = _temporary(target)
    tmp.mkdir()
    return tmp


def can_replace_folder(target: Path) -> bool:
    """Whether a folder built beside ``target`` can be renamed onto it: not a mount point (which no
    rename replaces), nor the current folder of this process or one above it (which would be left
    naming the deleted old folder)."""
    try:
        if not target.exists():
            return True
        here, there = os.path.realpath(os.getcwd()), os.path.realpath(target)
        inside = here == there or here.startswith(there.rstrip(os.sep) + os.sep)
        return not inside and os.stat(target).st_dev == os.stat(target.parent).st_dev
    except OSError:
        return False


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one step (Linux's renameat2 RENAME_EXCHANGE); False
    where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target`` and delete the folder that was there.

    Where the kernel swaps two paths in one step, a reader of ``target`` finds the old folder or
    the new one, never neither; elsewhere the old one is first renamed aside (for a moment there
    is no ``target``; a crash then leaves it as ``.NAME.PID.TOKEN.tmp`` beside the new one)."""
    kill_point("folder-swap")
    aside = None
    if target.is_dir() and any(target.iterdir()):
        aside = _temporary(target)
        if _exchange(new, target):
            os.rename(new, aside)  # ``new`` names the old folder now
        else:
            os.rename(target, aside)
            os.rename(new, target)
    else:
        os.replace(new, target)  # onto nothing, or onto an empty folder
    fsync_dir(target.parent)
    if aside is not None:
        kill_point("folder-swap")
        shutil.rmtree(aside, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, deletions) to disk; file systems that cannot are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The folder is created if missing. An exception (a full disk, KeyboardInterrupt) removes the
    temporary file and propagates; ``path`` keeps its previous content. An OSError that names no
    file (a full disk while writing) is raised again naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "xb") as f:  # created with the usual permissions (umask), unlike mkstemp's 0600
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fault_point: str | None = None) -> None:
    """Write ``data`` atomically. ``fault_point`` names an :mod:`alexnet.faults` kill point reached
    with half of the bytes on disk, so that crash tests can kill the process mid-write."""

    def write(f: BinaryIO) -> None:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        if fault_point is not None:
            kill_point(fault_point)
        f.write(data[half:])

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, value) -> None:
    """``value`` as indented JSON; NaN and infinity are refused (they are not JSON) rather than written."""
    text = json.dumps(value, indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """One array as an ``.npy`` file (no pickled objects)."""
    atomic_write(path, lambda f: np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False))


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Named arrays as an uncompressed ``.npz`` file, as ``np.savez`` writes it."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
