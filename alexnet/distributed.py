"""Processes, devices and process groups: one code path for a single process and for torchrun.

``init_from_env`` reads what torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Without them the run is one process with no process group, and every helper
below turns into a no-op, so the trainer calls them unconditionally. The same variables set by
hand (no torchrun) work too: the processes then meet at MASTER_ADDR:MASTER_PORT, waiting at
most ``join_timeout`` for each other; half-set or inconsistent variables are refused in one line.

When one process fails, the others see only their connections to it break;
:func:`explain_collective_error` turns that into one line pointing at the first error printed.

Two layouts of the ranks:

* data parallel (``towers=1``): every rank holds the whole network (the two towers as grouped
  convolutions) and its own share of each batch;
* data parallel x tower parallel (``towers=2``, section 3.2): ranks form replicas of
  ``towers`` consecutive ranks. Rank ``r`` holds tower ``r % towers`` of replica
  ``r // towers``; 4 ranks = replica 0 on ranks (0, 1) and replica 1 on ranks (2, 3).
  The towers of one replica exchange activations (its *tower group*) and see the same images;
  the ranks that hold the same tower in different replicas average gradients (its
  *data-parallel group*). Consecutive ranks share a machine under torchrun, so the activation
  exchanges stay inside a machine and only gradients cross machines.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from alexnet.errors import UserError
from alexnet.runtime import resolve_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE")
JOIN_TIMEOUT = timedelta(minutes=10)  # how long a process started by hand waits for the others
_JOINED = "alexnet/joined"  # store keys of the join, apart from those of torch's process groups
_POLL_S = 0.05  # how often a waiting rank looks at the store again (and at SIGTERM)
_CONNECT_TRY = timedelta(seconds=2)  # one attempt to reach rank 0's store; retried until the join timeout


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among ``world_size`` processes and its device.

    ``backend`` is None for a single process without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and saves."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def rank_prefix(environ: Mapping[str, str] | None = None) -> str:
    """``"rank 1 of 4: "`` in a process of a multi-process run (RANK, WORLD_SIZE set), else ``""``.

    Every process of a run prints its own errors; the prefix on each error line tells whose line
    is whose.
    """
    environ = os.environ if environ is None else environ
    rank, world = environ.get("RANK", "").strip(), environ.get("WORLD_SIZE", "").strip()
    if not (rank and world) or world == "1":
        return ""
    return f"rank {rank} of {world}: "


def _env_int(environ: Mapping[str, str], name: str, low: int, high: int | None, why: str) -> int:
    text = environ[name]
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not a whole number; {why}") from None
    if value < low or (high is not None and value >= high):
        allowed = f"{low} to {high - 1}" if high is not None else f"{low} or more"
        raise UserError(f"{name}={value} is out of range ({allowed}); {why}")
    return value


def read_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, None for a single process.

    Refuses, in one line each, what would otherwise start a run other than the one meant:
    RANK without WORLD_SIZE or the reverse (one process would train alone, silently, on what
    was meant as a share), numbers that are not numbers or out of range, and a process group
    without MASTER_ADDR/MASTER_PORT to meet at.
    """
    environ = os.environ if environ is None else environ
    given = [name for name in TORCHRUN_VARIABLES if environ.get(name, "").strip()]
    if not given:
        return None
    fix = "launch with torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process"
    if len(given) == 1:
        (name,), missing = given, next(n for n in TORCHRUN_VARIABLES if n not in given)
        if (name, environ[name].strip()) in (("RANK", "0"), ("WORLD_SIZE", "1")):
            return None  # says "one process" either way
        raise UserError(f"{name}={environ[name].strip()} is set but {missing} is not: {fix}, or unset {name} "
                        "to train in one process")
    world_size = _env_int(environ, "WORLD_SIZE", 1, None, fix)
    rank = _env_int(environ, "RANK", 0, world_size, f"each of the {world_size} processes needs its own RANK "
                                                    f"from 0 to {world_size - 1}; {fix}")
    local_rank = rank
    if environ.get("LOCAL_RANK", "").strip():
        local_rank = _env_int(environ, "LOCAL_RANK", 0, None, "it numbers the processes of one machine from 0")
    if world_size > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(name, "").strip():
                raise UserError(f"{name} is not set: the {world_size} processes meet at MASTER_ADDR:MASTER_PORT "
                                f"(rank 0's machine and a free port); {fix}")
        _env_int(environ, "MASTER_PORT", 1, 65536, "give a free TCP port on rank 0's machine")
    return rank, world_size, local_rank


def init_from_env(
    backend: str | None = None,
    *,
    device: str | torch.device = "auto",
    timeout: timedelta | None = None,
    join_timeout: timedelta = JOIN_TIMEOUT,
    note: Callable[[str], None] | None = None,
) -> Dist:
    """Join the process group that torchrun describes in the environment, or run alone.

    Args:
        backend: ``None`` picks NCCL on CUDA and gloo on the CPU.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (GPU LOCAL_RANK) or ``"cuda:N"`` (one process only).
        timeout: how long a collective waits for the other ranks before it fails.
        join_timeout: without torchrun (the variables set by hand), how long this process waits
            for all ``WORLD_SIZE`` processes to meet before it gives up in one line; SIGTERM
            ends the wait too. Under torchrun, torchrun's rendezvous does this.
        note: where a process that waits says so (stderr when None).
    """
    found = read_env()
    if found is None:
        return Dist(device=resolve_device(device))
    rank, world_size, local_rank = found
    resolved = resolve_device(device, local_rank, world_size)
    backend = backend or ("nccl" if resolved.type == "cuda" else "gloo")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    options: dict[str, Any] = dict(backend=backend, rank=rank, world_size=world_size)
    if timeout is not None:
        options["timeout"] = timeout
    if backend == "nccl":
        options["device_id"] = resolved  # binds the rank to its GPU; NCCL connects eagerly
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true" and world_size > 1:
        options["store"] = _join_by_hand(rank, world_size, join_timeout, note)
    with collective_errors_explained():
        dist.init_process_group(**options)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved, backend=backend)


def _join_by_hand(rank: int, world_size: int, join_timeout: timedelta, note: Callable[[str], None] | None
                  ) -> "dist.Store":
    """Meet the other processes at MASTER_ADDR:MASTER_PORT (rank 0 serves the store there).

    Waits in short steps, so that SIGTERM and Ctrl-C end the wait, and at most ``join_timeout``;
    refuses a port in use and a rank started twice.
    """
    addr, port = os.environ["MASTER_ADDR"].strip(), int(os.environ["MASTER_PORT"])
    where = f"{addr}:{port}"
    note = note or (lambda line: print(line, file=sys.stderr, flush=True))
    deadline = time.monotonic() + join_timeout.total_seconds()
    waited_note = time.monotonic() + 10.0
    told = False

    def waiting(for_what: Callable[[], str]) -> None:
        nonlocal told
        stop.check(where)
        now = time.monotonic()
        what = for_what() if now > deadline or (now > waited_note and not told) else ""
        if now > deadline:
            raise UserError(f"rank {rank} of {world_size} waited {join_timeout.total_seconds():.0f} s at {where} "
                            f"for {what}: start every process with the same MASTER_ADDR, MASTER_PORT and "
                            f"WORLD_SIZE={world_size}, or launch with torchrun")
        if now > waited_note and not told:
            note(f"rank {rank} of {world_size}: waiting at {where} for {what} (gives up after "
                 f"{join_timeout.total_seconds():.0f} s)")
            told = True
        time.sleep(_POLL_S)

    stop = _SigtermDuringJoin()
    with stop:
        if rank == 0:
            try:
                store = dist.TCPStore(addr, port, world_size, is_master=True, wait_for_workers=False,
                                      timeout=join_timeout)
            except dist.DistError as e:
                if "EADDRINUSE" in str(e) or "address already in use" in str(e).lower():
                    raise UserError(f"MASTER_PORT {port} is in use on this machine (another run, or another "
                                    "program): give every process of the run another free MASTER_PORT") from None
                raise UserError(f"rank 0 cannot serve the run's meeting point at {where} ({_first_line(e)}); "
                                "MASTER_ADDR must name this machine and MASTER_PORT a free port") from None
        else:
            while not _listening(addr, port):  # torch's own retries would print a C++ trace every attempt
                waiting(lambda: "rank 0 to start")
            try:
                store = dist.TCPStore(addr, port, world_size, is_master=False, wait_for_workers=False,
                                      timeout=_CONNECT_TRY)
            except dist.DistError as e:
                raise UserError(f"what listens at {where} is not this run's rank 0 ({_first_line(e)}): give every "
                                "process the MASTER_ADDR and MASTER_PORT of rank 0, and a port nothing else "
                                "uses") from None
        store.set_timeout(join_timeout)
        if store.add(f"{_JOINED}/rank{rank}", 1) > 1:
            raise UserError(f"RANK={rank} was started twice at {where} (or another run meets there too): give "
                            f"each of the {world_size} processes its own RANK from 0 to {world_size - 1}, and each "
                            "run its own MASTER_PORT")
        joined = store.add(_JOINED, 1)
        while joined < world_size:
            waiting(lambda: _missing(store, world_size))
            joined = store.add(_JOINED, 0)
    return store


def _missing(store: "dist.Store", world_size: int) -> str:
    missing = [r for r in range(world_size) if not store.check([f"{_JOINED}/rank{r}"])]
    return f"rank(s) {', '.join(map(str, missing[:8]))}{' ...' * (len(missing) > 8)} to start"


def _listening(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=1.0):
            return True
    except OSError:
        return False


class _SigtermDuringJoin:
    """While processes wait to meet, SIGTERM ends the wait at once: nothing has been done yet
    that a polite stop would have to save."""

    def __init__(self) -> None:
        self.arrived = False
        self.previous = None

    def __enter__(self) -> "_SigtermDuringJoin":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.arrived = True

    def check(self, where: str) -> None:
        if self.arrived:
            raise UserError(f"stopped by SIGTERM while waiting at {where} for the other processes; nothing was "
                            "written")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# What the backends say when a peer process died, closed its connection or never answered.
_LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out", "timeout",
              "socket closed", "connection refused", "remote worker crashing", "nccl communicator was aborted")


def explain_collective_error(e: BaseException) -> BaseException:
    """A collective's failure as one line the user can act on, when the cause is another process
    (it died, was killed, stopped on its own error, or hangs); ``e`` itself otherwise.

    The process that failed first prints why; the others only see their connection to it break,
    which torch reports as an error of its own that reads like a bug.
    """
    text = str(e).lower()
    if not isinstance(e, (dist.DistError, RuntimeError)) or not any(words in text for words in _LOST_PEER):
        return e
    if not dist.is_initialized() and not rank_prefix():  # one process: there is no other
        return e
    waited = "timed out" in text or "timeout" in text
    what = ("another process of the run did not answer in time (it hangs, was stopped, or took longer than "
            "--collective-timeout-minutes)" if waited
            else "another process of the run stopped (it failed: its error, printed above, says why; or it was killed)")
    seen = re.sub(r"^\[[^\]]*\]\s*", "", _first_line(e)).split(". ")[0][:120]  # without gloo's source path
    return UserError(f"{what}, so this one stops too (it saw: {seen}); fix that and run the same "
                     "command again, with --resume if the run had written a checkpoint")


@contextlib.contextmanager
def collective_errors_explained() -> Iterator[None]:
    """Turn a collective's failure caused by another process into :func:`explain_collective_error`'s line."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        explained = explain_collective_error(e)
        if explained is e:
            raise
        raise explained from e


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``tensor`` in place over the ranks of ``group`` (all ranks when None); returns it."""
    if dist.is_initialized():
        with collective_errors_explained():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def barrier(group: dist.ProcessGroup | None = None) -> None:
    if dist.is_initialized():
        with collective_errors_explained():
            dist.barrier(group=group)


def broadcast_object(obj: Any, src: int = 0, group: dist.ProcessGroup | None = None) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; ``src`` is a global rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    with collective_errors_explained():
        dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_layout(world_size: int, towers: int) -> tuple[list[list[int]], list[list[int]]]:
    """The ranks of every tower group (one per replica) and of every data-parallel group (one per tower).

    >>> rank_layout(4, 2)
    ([[0, 1], [2, 3]], [[0, 2], [1, 3]])
    """
    if towers < 1 or world_size < 1:
        raise ValueError(f"world size and towers must be positive, got {world_size} and {towers}")
    if world_size % towers:
        fitting = world_size + towers - world_size % towers
        raise UserError(
            f"--tower-parallel holds the {towers} towers of each replica on {towers} processes, so it needs a "
            f"number of processes that is a multiple of {towers}; this run has {world_size}: launch "
            f"{fitting} (torchrun --nproc-per-node={fitting} ...), or leave out --tower-parallel"
        )
    replicas = world_size // towers
    tower_groups = [[r * towers + t for t in range(towers)] for r in range(replicas)]
    data_parallel_groups = [[r * towers + t for r in range(replicas)] for t in range(towers)]
    return tower_groups, data_parallel_groups


@dataclass(frozen=True)
class ParallelGroups:
    """This rank's place in the replicas x towers layout and the process groups it belongs to.

    Shard the data by ``replica`` over ``replicas`` shards (not by rank): the towers of one
    replica must see the same images. The groups are None when there is no process group.
    """

    replica: int
    tower: int
    replicas: int
    towers: int
    tower_ranks: tuple[int, ...]
    data_parallel_ranks: tuple[int, ...]
    tower_group: dist.ProcessGroup | None
    data_parallel_group: dist.ProcessGroup | None


def make_process_groups(world_size: int, towers: int, timeout: timedelta | None = None) -> ParallelGroups:
    """Create the tower groups and the data-parallel groups of ``world_size`` ranks (their
    collectives wait ``timeout`` for each other: None, the backend's default).

    Collective: every rank must call it, with the same arguments, at the same point, since
    ``dist.new_group`` has to be called by all ranks for every group in the same order.
    """
    tower_lists, data_parallel_lists = rank_layout(world_size, towers)
    if not dist.is_initialized():
        if world_size != 1:
            raise RuntimeError(f"no process group: initialise it (init_from_env) before laying out {world_size} ranks")
        return ParallelGroups(0, 0, 1, 1, (0,), (0,), None, None)
    if dist.get_world_size() != world_size:
        raise ValueError(f"world size {world_size} does not match the process group's {dist.get_world_size()}")
    rank = dist.get_rank()

    def mine(rank_lists: list[list[int]]) -> tuple[tuple[int, ...], dist.ProcessGroup]:
        found = None
        for ranks in rank_lists:  # every rank creates every group, in one order
            group = dist.group.WORLD if len(ranks) == world_size else dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                found = (tuple(ranks), group)
        assert found is not None
        return found

    tower_ranks, tower_group = mine(tower_lists)
    data_parallel_ranks, data_parallel_group = mine(data_parallel_lists)
    return ParallelGroups(
        replica=rank // towers,
        tower=rank % towers,
        replicas=world_size // towers,
        towers=towers,
        tower_ranks=tower_ranks,
        data_parallel_ranks=data_parallel_ranks,
        tower_group=tower_group,
        data_parallel_group=data_parallel_group,
    )
