"""Processes, devices and process groups: one code path for a single process and for torchrun.

``init_from_env`` reads what torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Without them the run is one process with no process group, and every helper
below turns into a no-op, so the trainer calls them unconditionally.

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

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from alexnet.errors import UserError
from alexnet.runtime import resolve_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE")


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


def init_from_env(
    backend: str | None = None, *, device: str | torch.device = "auto", timeout: timedelta | None = None
) -> Dist:
    """Join the process group that torchrun describes in the environment, or run alone.

    Args:
        backend: ``None`` picks NCCL on CUDA and gloo on the CPU.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (GPU LOCAL_RANK) or ``"cuda:N"`` (one process only).
        timeout: how long a collective waits for the other ranks before it fails.
    """
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return Dist(device=resolve_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    resolved = resolve_device(device, local_rank, world_size)
    backend = backend or ("nccl" if resolved.type == "cuda" else "gloo")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    options: dict[str, Any] = dict(backend=backend, rank=rank, world_size=world_size)
    if timeout is not None:
        options["timeout"] = timeout
    if backend == "nccl":
        options["device_id"] = resolved  # binds the rank to its GPU; NCCL connects eagerly
    dist.init_process_group(**options)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved, backend=backend)


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``tensor`` in place over the ranks of ``group`` (all ranks when None); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def barrier(group: dist.ProcessGroup | None = None) -> None:
    if dist.is_initialized():
        dist.barrier(group=group)


def broadcast_object(obj: Any, src: int = 0, group: dist.ProcessGroup | None = None) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; ``src`` is a global rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
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
        raise UserError(
            f"{towers} towers per replica need a world size that is a multiple of {towers}, "
            f"got {world_size} processes: launch a multiple of {towers} processes"
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


def make_process_groups(world_size: int, towers: int) -> ParallelGroups:
    """Create the tower groups and the data-parallel groups of ``world_size`` ranks.

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
            group = dist.group.WORLD if len(ranks) == world_size else dist.new_group(ranks)
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
