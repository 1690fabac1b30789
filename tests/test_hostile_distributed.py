"""Multi-process runs as a careless or hostile user starts them: half-set or inconsistent
torchrun variables, a process that never comes, a port in use, a rank started twice, SIGTERM
while waiting, ranks reading different data sets, and a rank that dies mid-run.

Each case must end in one clear line (a UserError) within a bounded time, never a hang or a
message that reads like a bug of the program.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from alexnet.distributed import explain_collective_error, init_from_env, rank_prefix, read_env
from alexnet.errors import UserError
from helpers import free_port, run_ranks

ROOT = Path(__file__).resolve().parents[1]
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- the variables


@pytest.mark.parametrize("env, match", [
    (dict(WORLD_SIZE="2"), r"WORLD_SIZE=2 is set but RANK is not: .*torchrun.*unset WORLD_SIZE"),
    (dict(RANK="1"), r"RANK=1 is set but WORLD_SIZE is not"),
    (dict(RANK="x", WORLD_SIZE="2"), r"RANK='x' is not a whole number"),
    (dict(RANK="0", WORLD_SIZE="two"), r"WORLD_SIZE='two' is not a whole number"),
    (dict(RANK="2", WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="29500"), r"RANK=2 is out of range \(0 to 1\)"),
    (dict(RANK="-1", WORLD_SIZE="2"), r"RANK=-1 is out of range"),
    (dict(RANK="0", WORLD_SIZE="0"), r"WORLD_SIZE=0 is out of range \(1 or more\)"),
    (dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="-3"), r"LOCAL_RANK=-3 is out of range"),
    (dict(RANK="0", WORLD_SIZE="2", MASTER_PORT="29500"), r"MASTER_ADDR is not set"),
    (dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1"), r"MASTER_PORT is not set"),
    (dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="70000"), r"MASTER_PORT=70000 is out of range"),
])
def test_half_set_or_inconsistent_variables_are_refused_in_one_line(env, match):
    """Before, WORLD_SIZE=2 alone (or RANK=1 alone) trained silently as one process, RANK=2 of 2
    waited forever, and a missing MASTER_ADDR or a RANK of 'x' was an 'internal error'."""
    with pytest.raises(UserError, match=match) as caught:
        read_env(env)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    (dict(WORLD_SIZE="1"), None),
    (dict(RANK="0"), None),
    (dict(LOCAL_RANK="3"), None),  # other launchers set LOCAL_RANK alone
    (dict(RANK="0", WORLD_SIZE="1"), (0, 1, 0)),
    (dict(RANK="3", WORLD_SIZE="4", MASTER_ADDR="h", MASTER_PORT="1234"), (3, 4, 3)),
    (dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="1234"), (3, 4, 1)),
])
def test_variables_that_describe_a_run_are_read(env, expected):
    assert read_env(env) == expected


def test_rank_prefix():
    assert rank_prefix({}) == ""
    assert rank_prefix(dict(RANK="0", WORLD_SIZE="1")) == ""
    assert rank_prefix(dict(RANK="2", WORLD_SIZE="4")) == "rank 2 of 4: "


def test_a_lost_peer_reads_as_such_and_other_errors_pass_through(clean_env):
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
                        "by peer [127.0.0.1]:60317. This is typically caused by a remote worker crashing. GLHF!")
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    explained = explain_collective_error(gloo)
    assert isinstance(explained, UserError)
    assert str(explained).startswith("another process of the run stopped")
    assert "Connection closed by peer [127.0.0.1]:60317" in str(explained) and "pytorch" not in str(explained)
    assert "--resume" in str(explained)
    timed_out = explain_collective_error(dist.DistBackendError("Timed out waiting 1800000ms for recv operation"))
    assert "did not answer in time" in str(timed_out)
    mine = RuntimeError("params[14] in this process with sizes [4, 512] appears not to match")
    assert explain_collective_error(mine) is mine


# ---------------------------------------------------------------- joining by hand


def _set(monkeypatch, rank: int, world_size: int, port: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))


@pytest.mark.slow  # waits out a one-second join timeout
def test_a_lone_rank_0_gives_up_naming_the_missing_ranks(clean_env):
    """Before, rank 0 of 3 started alone waited 30 minutes (torch's default), silent, deaf to SIGTERM."""
    _set(clean_env, 0, 3, free_port())
    notes: list[str] = []
    with pytest.raises(UserError, match=r"rank 0 of 3 waited 1 s at 127\.0\.0\.1:\d+ for rank\(s\) 1, 2 to start"):
        init_from_env(device="cpu", join_timeout=timedelta(seconds=1), note=notes.append)
    assert not dist.is_initialized()


@pytest.mark.slow  # waits out a one-second join timeout
def test_a_rank_without_rank_0_gives_up(clean_env):
    _set(clean_env, 1, 2, free_port())
    with pytest.raises(UserError, match=r"rank 1 of 2 waited 1 s at .* for rank 0 to start"):
        init_from_env(device="cpu", join_timeout=timedelta(seconds=1))


def test_master_port_in_use(clean_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        _set(clean_env, 0, 2, taken.getsockname()[1])
        with pytest.raises(UserError, match=r"MASTER_PORT \d+ is in use on this machine"):
            init_from_env(device="cpu", join_timeout=timedelta(seconds=5))


def test_a_rank_started_twice_is_refused(clean_env):
    port = free_port()
    rank0 = dist.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)  # stands for rank 0
    rank0.add("alexnet/joined/rank1", 1)  # a first RANK=1 is there already
    _set(clean_env, 1, 2, port)
    with pytest.raises(UserError, match=r"RANK=1 was started twice at 127\.0\.0\.1:\d+"):
        init_from_env(device="cpu", join_timeout=timedelta(seconds=5))
    del rank0


@pytest.mark.slow
def test_sigterm_ends_the_wait_for_missing_ranks(tmp_path):
    """The CLI's SIGTERM handler only asks training to stop at its next step; a process still
    waiting for the others must stop at once, in one line."""
    port = free_port()
    code = ("import sys\nfrom alexnet.distributed import init_from_env\nfrom alexnet.errors import UserError\n"
            "try:\n    init_from_env(device='cpu')\nexcept UserError as e:\n    print(e)\n    sys.exit(2)\n")
    env = {**{k: v for k, v in os.environ.items() if k not in RANK_VARIABLES},
           "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        hang = time.monotonic() + 60
        while not _listening(port):  # rank 0 serves the meeting point: its SIGTERM handler is in place
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < hang, "rank 0 never listened"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (out, err)
    assert out.strip() == (f"stopped by SIGTERM while waiting at 127.0.0.1:{port} for the other processes; "
                           "nothing was written")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- in a process group


@pytest.fixture(scope="module")
def two_stores(shared_store) -> tuple[Path, Path]:
    a, b = (shared_store(classes=classes, per_class=4, size=16, image_size=16, val_per_class=1) for classes in (2, 3))
    return a, b


def _layout(d):
    from alexnet.distributed import make_process_groups
    from alexnet.training.layout import DataParallel

    return DataParallel(d, make_process_groups(d.world_size, 1))


def _different_stores(d, stores: tuple[Path, Path]) -> None:
    from alexnet.data import open_store

    layout = _layout(d)
    layout.check_same_run(open_store(stores[0]), dict(lr=0.01))  # the same store and recipe on both: passes
    try:
        layout.loader(open_store(stores[d.rank]), "train", 2, train=True, seed=0, workers=0)
    except UserError as e:
        assert str(e).startswith("the processes of this run read different data sets (rank 0: "), e
        assert "rank 1: " in str(e) and "2 classes" in str(e) and "3 classes" in str(e)
        return
    raise AssertionError(f"rank {d.rank} loaded another rank's data set without a word")


@pytest.mark.slow
def test_ranks_reading_different_stores_are_refused(two_stores):
    """Before, two stores of one shape trained one network on both, mixing their images and labels."""
    run_ranks(_different_stores, 2, two_stores)


def _different_batches(d, store: Path) -> None:
    from alexnet.data import open_store

    layout = _layout(d)
    try:
        layout.loader(open_store(store), "train", 2 + d.rank, train=True, seed=0, workers=0)
    except UserError as e:
        assert str(e).startswith("the processes of this run were given different settings (batch_size_per_device "
                                 "2 on rank 0, 3 on rank 1)"), e
        return
    raise AssertionError(f"rank {d.rank} trained with another batch than rank 0")


@pytest.mark.slow
def test_ranks_given_different_batch_sizes_are_refused(two_stores):
    """Processes started by hand with another --batch-size-per-device each: DDP would average
    the gradients of unequal batches as if they were equal."""
    run_ranks(_different_batches, 2, two_stores[0])


def _peer_dies(d) -> None:
    layout = _layout(d)
    layout.reduce(torch.ones(1))  # both ranks are there
    if d.rank == 1:
        os._exit(0)  # as if killed: no cleanup, its connections just close
    try:
        layout.reduce(torch.ones(1))
    except UserError as e:
        assert str(e).startswith("another process of the run stopped"), e
        return
    raise AssertionError("the reduction succeeded without rank 1")


@pytest.mark.slow
def test_a_rank_that_dies_leaves_the_others_one_clear_line():
    """Before, the survivors printed 'internal error RuntimeError: [.../gloo/...pair.cc:553] Connection
    closed by peer ... GLHF!; please report it', as if the program had a bug."""
    run_ranks(_peer_dies, 2)


def _peer_hangs(rank: int, world_size: int, port: int, woke: str) -> None:
    from helpers import set_rank_env

    from alexnet.distributed import cleanup
    from alexnet.training.layout import join

    set_rank_env(rank, world_size, port)
    layout = join("cpu", tower_parallel=False, timeout_minutes=0.05)  # 3 s
    try:
        layout.reduce(torch.ones(1))  # both ranks are there
        if rank == 1:  # hangs until rank 0 has given up (or, if it never does, answers after 120 s)
            hang = time.monotonic() + 120
            while not os.path.exists(woke) and time.monotonic() < hang:
                time.sleep(0.1)
            if os.path.exists(woke):
                os._exit(0)
            layout.reduce(torch.ones(1))
            return
        try:
            layout.reduce(torch.ones(1))
        except UserError as e:
            Path(woke).touch()
            assert str(e).startswith("another process of the run did not answer in time"), e
            assert "--collective-timeout-minutes" in str(e), e
            return
        raise AssertionError("rank 0 waited for the hung rank beyond --collective-timeout-minutes")
    finally:
        cleanup()


@pytest.mark.slow
def test_a_hung_rank_is_given_up_after_the_collective_timeout(tmp_path):
    """Before, a rank that hung (a stopped process, a stuck file system) held the others for
    torch's default 30 minutes, with no flag to shorten it."""
    from helpers import start

    start(_peer_hangs, 2, str(tmp_path / "rank0-gave-up"))


def _mixed_tower_parallel(rank: int, world_size: int, port: int) -> None:
    from helpers import set_rank_env

    from alexnet.distributed import cleanup
    from alexnet.training.layout import join

    set_rank_env(rank, world_size, port)
    try:
        join("cpu", tower_parallel=rank == 1)
    except UserError as e:
        assert str(e).startswith("--tower-parallel was given to rank(s) 1 but not to rank(s) 0: "), e
        return
    finally:
        cleanup()
    raise AssertionError(f"rank {rank} went on with another layout than the other rank")


@pytest.mark.slow
def test_tower_parallel_on_some_ranks_only_is_refused():
    """Before, the ranks laid out different groups and crashed: one aborted in gloo ('Received data
    size doesn't match expected size'), the other printed an internal error."""
    from helpers import start

    start(_mixed_tower_parallel, 2)
