"""Test helper, not a test file: run gloo ranks as CPU processes on 127.0.0.1.

Each rank gets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
on a free port. The ranks are forked by a forkserver that has imported torch once, so each
start is cheap; an exception in a rank fails the test with that rank's traceback
(``mp.ProcessRaisedException``), and a rank that dies fails it with ``mp.ProcessExitedException``.
The test files import this as ``_ranks``: pytest puts tests/ on sys.path (no tests/__init__.py).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.multiprocessing as mp

from alexnet.distributed import cleanup, init_from_env

# Imported once by the forkserver that forks every rank (DDP's first use imports torch._dynamo).
# A pytest process starts one forkserver, so one list serves every test file.
PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "matplotlib.pyplot",
           "alexnet.distributed", "alexnet.towers", "alexnet.train"]
TIMEOUT = timedelta(seconds=60)  # how long a rank waits for the others in the process group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_env(rank: int, world_size: int, port: int) -> None:
    """In a rank: one CPU thread, torchrun's variables, and gloo kept on the loopback interface."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"


def start(entry, world_size: int, *args) -> None:
    """Call ``entry(rank, world_size, port, *args)`` in ``world_size`` processes and wait for all."""
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    mp.start_processes(
        entry, args=(world_size, free_port(), *args), nprocs=world_size, join=True, start_method="forkserver"
    )


def _group_entry(rank: int, world_size: int, port: int, fn, args: tuple) -> None:
    set_rank_env(rank, world_size, port)
    d = init_from_env(device="cpu", timeout=TIMEOUT)
    try:
        fn(d, *args)
    finally:
        cleanup()


def run_ranks(fn, world_size: int, *args) -> None:
    """Run ``fn(dist, *args)`` on ``world_size`` ranks joined in a gloo group (``dist``: ``init_from_env``'s)."""
    start(_group_entry, world_size, fn, args)
