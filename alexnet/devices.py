"""Flags checked against this machine, and the process-wide settings that follow from them.

* :func:`validate_device_name`: a ``--device`` value this installation of torch can use, or one
  line saying why not (``tpu`` is no torch device, ``meta`` holds no data, ``cuda:7`` on a
  machine with two GPUs, ``mps`` without Apple's GPU).
* :func:`cap_cpu_threads`: ``--cpu-threads`` above the cores this process may use is lowered to
  that number, with a note; more threads than cores only make OpenMP threads wait on each other.
* :func:`apply_process_settings`: thread count and deterministic kernels. These change the whole
  process, so only the CLI entry of a command calls this; library functions never do.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from alexnet.errors import UserError

USABLE = "auto, cpu, cuda or cuda:N"


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _choices() -> str:
    """The values that work here, for the end of an error line."""
    gpus = _gpu_count()
    if gpus == 0:
        extra = ", mps" if _mps_available() else ""
        return f"use auto or cpu{extra} (this torch sees no CUDA GPU)"
    last = f"cuda:{gpus - 1}"
    return f"use auto, cpu, cuda or cuda:0{'' if gpus == 1 else f'..{last}'}"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def validate_device_name(name: str) -> None:
    """Raise a one-line :class:`UserError` unless torch can run this process on device ``name``.

    Accepted: ``auto``; ``cpu``; ``cuda`` and ``cuda:N`` when torch sees a CUDA GPU N; ``mps``
    when torch has Apple's GPU backend and it is available.
    """
    text = str(name).strip()
    if text == "auto":
        return
    if not text:
        raise UserError(f"--device is empty; {_choices()}")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {text!r} is not a device torch knows; {_choices()}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise UserError(f"--device {text!r}: there is one CPU device, 'cpu'; {_choices()}")
        return
    if device.type == "cuda":
        gpus = _gpu_count()
        if gpus == 0:
            built = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"--device {text!r}: {built}; {_choices()}")
        if device.index is not None and device.index >= gpus:
            raise UserError(f"--device {text!r}: this machine has {gpus} CUDA GPU(s), cuda:0..cuda:{gpus - 1}; {_choices()}")
        return
    if device.type == "mps":
        if not _mps_available():
            raise UserError(f"--device {text!r}: Apple's MPS backend is not available to this torch; {_choices()}")
        return
    if device.type == "meta":
        raise UserError(f"--device {text!r} is torch's shape-only device, which holds no data; {_choices()}")
    raise UserError(f"--device {text!r}: alexnet runs on {USABLE}, not on {device.type}; {_choices()}")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cap_cpu_threads(n: int, log: Callable[[str], None]) -> int:
    """``n`` (0 = torch's default), lowered to the available cores with a note when above them."""
    n = int(n)
    if n < 0:
        raise UserError(f"--cpu-threads must be 0 (torch's default) or more, got {n}")
    cores = available_cores()
    if n > cores:
        log(f"note: --cpu-threads {n} is more than the {cores} core(s) this process may use; using {cores}")
        return cores
    return n


def apply_process_settings(cpu_threads: int, deterministic: bool, log: Callable[[str], None]) -> int:
    """Set torch's thread count and deterministic mode for this whole process; returns the threads used.

    ``cpu_threads`` 0 leaves torch's default (one per core). Without ``deterministic``, cuDNN times
    its algorithms for each new shape and keeps the fastest (``cudnn.benchmark``): training repeats
    the same shapes. Call it once, at the CLI entry of a command, before any model is built.
    """
    threads = cap_cpu_threads(cpu_threads, log)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS reads this when its first handle is made; without it, deterministic matmuls raise on CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    return threads or torch.get_num_threads()
