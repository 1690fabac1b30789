"""How the processes of a run hold the network (section 3.2): the only home of the parallel layout.

Ranks form ``replicas x towers_per_replica`` (:mod:`alexnet.distributed`):

* :class:`DataParallel`: every rank holds the whole network (the two towers as grouped
  convolutions); replicas split each global batch and average gradients (DDP). One process
  is the case of one replica.
* :class:`TowerParallel`: each replica is two ranks holding one tower each, the paper's two
  GPUs; the towers of a replica see the same images and exchange activations.

A layout builds the model on its device, wraps it for the step, shards the data by replica,
reduces metrics over replicas, seeds the random streams, and converts tensors to and from the
single-device checkpoint layout, so the training loop has no branch on the layout.

Processes started apart (by hand, on several machines) may disagree: :func:`join` refuses
``--tower-parallel`` on some ranks only, and the first training loader refuses ranks that read
different data sets or batch sizes (:meth:`DataParallel.check_same_run`). A collective that
fails because another rank died or stopped on its own error ends in one line saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from alexnet.data.loader import Loader
from alexnet.data.store import Store
from alexnet.distributed import (Dist, ParallelGroups, all_reduce_sum, collective_errors_explained, init_from_env,
                                 make_process_groups)
from alexnet.errors import UserError

RESEED_STRIDE = 7919  # a prime: reseeded streams of different steps never coincide


@dataclass(frozen=True)
class LayoutInfo:
    """What a checkpoint records about the layout it was written in."""

    world_size: int
    replicas: int
    towers_per_replica: int
    batch_size_per_device: int

    @property
    def global_batch_size(self) -> int:
        return self.replicas * self.batch_size_per_device

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "LayoutInfo":
        if "layout" in saved:
            return cls(**saved["layout"])
        # checkpoints of format 1 recorded the layout only through their RNG states, one per rank
        towers = 2 if saved["config"].get("tower_parallel") else 1
        world = len(saved["rng"])
        return cls(world, world // towers, towers, int(saved["config"]["batch_size_per_device"]))


class DataParallel:
    """Whole networks on every rank; ``replicas`` of them average gradients."""

    towers_per_replica = 1

    def __init__(self, proc: Dist, groups: ParallelGroups) -> None:
        self.proc, self.groups = proc, groups

    @property
    def device(self) -> torch.device:
        return self.proc.device

    @property
    def is_main(self) -> bool:
        return self.proc.is_main

    def info(self, batch_size_per_device: int) -> LayoutInfo:
        return LayoutInfo(self.proc.world_size, self.groups.replicas, self.towers_per_replica, batch_size_per_device)

    # --- the model ---
    def place(self, model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
        """This rank's part of the single-device ``model``, on this rank's device."""
        return model.to(self.device, memory_format=memory_format)

    def step_model(self, model: nn.Module, compile: bool, compile_mode: str = "default") -> nn.Module:
        """What the training step calls: DDP over the replicas, compiled (in ``compile_mode``) if asked."""
        if self.groups.replicas > 1:
            with collective_errors_explained():
                model = nn.parallel.DistributedDataParallel(
                    model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    process_group=self.groups.data_parallel_group)
        return torch.compile(model, mode=compile_mode) if compile else model

    def to_single(self, model: nn.Module, tensors: dict) -> dict:
        """This rank's tensors (weights, velocities) in the single-device layout (collective)."""
        return tensors

    def from_single(self, tensors: dict) -> dict:
        """This rank's part of single-device tensors."""
        return tensors

    # --- the data ---
    def loader(self, store: Store, split: str, batch_size_per_device: int, *, train: bool, seed: int,
               workers: int, shuffle_window: int = 0) -> Loader:
        """This replica's shard of ``split``: for training, full batches in a new order every epoch;
        for validation, every image once over the replicas. Collective: the first call checks that
        every rank reads the same data set."""
        if split == "train":
            self.check_same_run(store, dict(batch_size_per_device=batch_size_per_device, seed=seed,
                                            shuffle_window_images=shuffle_window))
        return Loader(store.split(split), batch_size_per_device, shuffle=train, seed=seed, drop_last=train,
                      rank=self.groups.replica, world_size=self.groups.replicas, workers=workers,
                      pin_memory=self.device.type == "cuda", shuffle_window=shuffle_window if train else 0)

    def check_same_run(self, store: Store | None, recipe: dict) -> None:
        """Refuse a run whose ranks read different data sets or were given different settings
        (processes started by hand with other DATA or flags, or another copy of the data on some
        machine): they would mix images and labels of both into one network, or average
        gradients of batches of other sizes. Collective.

        ``recipe``: the settings every rank must share (e.g. ``TrainConfig.to_dict()``). A store
        is compared by a digest of its content (the same for any copy of one store, wherever it
        lies), its classes and its split sizes.
        """
        if self.proc.world_size == 1:
            return
        from alexnet.training.recipe import store_identity

        data = None if store is None else dict(
            digest=store_identity(store),
            classes=len(store.classes), images={s: len(store.split(s)) for s in store.splits})
        every = self.gather_objects((data, str(getattr(store, "path", "")), recipe))
        for rank, (other_data, _, other_recipe) in enumerate(every):
            if other_data != every[0][0]:
                describe = ", ".join(f"rank {r}: {path} ({d['classes']} classes, "
                                     f"{'/'.join(str(n) for n in d['images'].values())} images, digest {d['digest']})"
                                     for r, (d, path, _) in ((0, every[0]), (rank, every[rank])))
                raise UserError(f"the processes of this run read different data sets ({describe}): give every "
                                "process the same prepared store (a copy of one store on each machine is fine)")
            differ = [k for k in sorted(set(recipe) | set(other_recipe)) if other_recipe.get(k) != every[0][2].get(k)]
            if differ:
                shown = "; ".join(f"{k} {every[0][2].get(k)!r} on rank 0, {other_recipe.get(k)!r} on rank {rank}"
                                  for k in differ[:4])
                raise UserError(f"the processes of this run were given different settings ({shown}): start every "
                                "process with the same command (torchrun does)")

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over the replicas (the towers of a replica hold the same counts)."""
        if self.groups.replicas == 1:
            return t
        with collective_errors_explained():
            return all_reduce_sum(t, self.groups.data_parallel_group)

    def any_rank(self, flag: torch.Tensor) -> torch.Tensor:
        """True on every rank when ``flag`` is true on any rank."""
        if self.proc.world_size == 1:
            return flag
        flag = flag.to(torch.int32)
        with collective_errors_explained():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.bool()

    def gather_objects(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank."""
        if self.proc.world_size == 1:
            return [obj]
        out = [None] * self.proc.world_size
        with collective_errors_explained():
            dist.all_gather_object(out, obj)
        return out

    # --- randomness ---
    def seed(self, seed: int, generator: torch.Generator, global_step: int = 0) -> None:
        """Seed the augmentation draws per replica (both towers of a replica crop alike) and
        dropout per rank; ``global_step`` > 0 reseeds a run resumed in another layout."""
        generator.manual_seed(seed * 1000 + self.groups.replica + RESEED_STRIDE * global_step)
        torch.manual_seed(seed * 1000 + self.proc.rank + RESEED_STRIDE * global_step)


class TowerParallel(DataParallel):
    """Each replica holds one tower per rank (section 3.2, the paper's two GPUs)."""

    towers_per_replica = 2

    def place(self, model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
        from alexnet.towers import TowerParallelAlexNet

        tower = TowerParallelAlexNet.from_grouped(model, self.groups.tower_group, self.groups.tower)
        return tower.to(self.device, memory_format=memory_format)

    def to_single(self, model: nn.Module, tensors: dict) -> dict:
        with collective_errors_explained():
            return model.gather_grouped(tensors)

    def from_single(self, tensors: dict) -> dict:
        from alexnet.towers import tower_state_dict_from_grouped

        return tower_state_dict_from_grouped(tensors, self.groups.tower)


def join(device: str, tower_parallel: bool, timeout_minutes: float = 0.0) -> DataParallel:
    """This process's place in the run that torchrun describes (or a single process); with
    ``timeout_minutes``, a collective waits that long for the other ranks (0: torch's default)."""
    timeout = timedelta(minutes=timeout_minutes) if timeout_minutes else None
    proc = init_from_env(device=device, timeout=timeout)
    towers = 2 if tower_parallel else 1
    if proc.world_size > 1:  # the groups below must be laid out alike on every rank
        every = [None] * proc.world_size
        with collective_errors_explained():
            dist.all_gather_object(every, tower_parallel)
        if len(set(every)) > 1:
            given = [r for r, t in enumerate(every) if t]
            others = [r for r, t in enumerate(every) if not t]
            raise UserError(f"--tower-parallel was given to rank(s) {', '.join(map(str, given))} but not to rank(s) "
                            f"{', '.join(map(str, others))}: start every process with the same command (torchrun does)")
    groups = make_process_groups(proc.world_size, towers, timeout)
    return (TowerParallel if tower_parallel else DataParallel)(proc, groups)
