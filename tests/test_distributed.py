"""Process-group helpers: the single-process fallback, and real gloo groups of 2 and 4 CPU processes."""

from __future__ import annotations

import pytest
import torch

from alexnet.distributed import (
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    init_from_env,
    make_process_groups,
    rank_layout,
    resolve_device,
)
from alexnet.errors import UserError
from helpers import run_ranks


def test_single_process_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    d = init_from_env(device="cpu")
    assert (d.rank, d.world_size, d.local_rank, d.backend) == (0, 1, 0, None)
    assert d.is_main and not d.is_distributed and d.device == torch.device("cpu")
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert broadcast_object({"a": 1}) == {"a": 1}
    barrier()
    groups = make_process_groups(1, 1)
    assert (groups.replica, groups.tower, groups.replicas, groups.towers) == (0, 0, 1, 1)
    assert groups.tower_group is None and groups.data_parallel_group is None
    cleanup()


def test_rank_layout():
    assert rank_layout(4, 2) == ([[0, 1], [2, 3]], [[0, 2], [1, 3]])
    assert rank_layout(2, 2) == ([[0, 1]], [[0], [1]])
    assert rank_layout(4, 1) == ([[0], [1], [2], [3]], [[0, 1, 2, 3]])
    assert rank_layout(6, 2)[1] == [[0, 2, 4], [1, 3, 5]]
    with pytest.raises(UserError, match=r"multiple of 2; this run has 3: launch 4 \(torchrun --nproc-per-node=4"):
        rank_layout(3, 2)
    with pytest.raises(UserError, match=r"this run has 1: launch 2 .*or leave out --tower-parallel"):
        rank_layout(1, 2)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
        with pytest.raises(UserError, match="LOCAL_RANK"):
            resolve_device("cuda:0", local_rank=1, world_size=2)
    else:
        with pytest.raises(UserError, match="CUDA"):
            resolve_device("cuda")


def _helpers(d) -> None:
    assert (d.world_size, d.local_rank, d.backend, d.device.type) == (2, d.rank, "gloo", "cpu")
    assert d.is_main == (d.rank == 0) and d.is_distributed
    t = torch.tensor([d.rank + 1.0, 10.0 * (d.rank + 1)])
    assert all_reduce_sum(t) is t
    assert t.tolist() == [3.0, 30.0]
    assert broadcast_object({"from": d.rank}) == {"from": 0}
    assert broadcast_object(f"rank {d.rank}", src=1) == "rank 1"
    barrier()


@pytest.mark.slow
def test_two_processes_sum_and_broadcast():
    run_ranks(_helpers, 2)


def _layout(d) -> None:
    groups = make_process_groups(4, 2)
    assert (groups.replica, groups.tower) == (d.rank // 2, d.rank % 2)
    assert (groups.replicas, groups.towers) == (2, 2)
    assert groups.tower_ranks == ((0, 1), (0, 1), (2, 3), (2, 3))[d.rank]
    assert groups.data_parallel_ranks == ((0, 2), (1, 3), (0, 2), (1, 3))[d.rank]
    # Each group sums exactly its members: rank r contributes 2^r.
    pairs = ((groups.tower_group, groups.tower_ranks), (groups.data_parallel_group, groups.data_parallel_ranks))
    for group, members in pairs:
        total = all_reduce_sum(torch.tensor([2.0**d.rank]), group=group)
        assert total.item() == sum(2.0**r for r in members)
    plain = make_process_groups(4, 1)  # data parallel only
    assert plain.tower_ranks == (d.rank,) and plain.data_parallel_ranks == (0, 1, 2, 3)
    assert all_reduce_sum(torch.ones(1), group=plain.data_parallel_group).item() == 4.0


@pytest.mark.slow
def test_four_ranks_form_two_replicas_of_two_towers():
    run_ranks(_layout, 4)
