"""Two "nodes" under torchrun (--nnodes 2, a c10d rendezvous on 127.0.0.1, gloo, CPU) read one JPEG
store: every image of an epoch is served exactly once, with its own pixels and label, in both orders."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data import open_store, prepare_store

pytestmark = pytest.mark.slow  # two torchrun launchers and their ranks

pytest.importorskip("simplejpeg")

RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch.distributed as dist
    from alexnet.data import Loader, open_store

    store_dir, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    split = open_store(store_dir).split("train")
    served = {}
    for name, window in (("full", 0), ("windowed", 24)):
        loader = Loader(split, 7, shuffle=True, seed=11, rank=rank, world_size=world, drop_last=False, workers=2,
                        shuffle_window=window, block_images=8)
        loader.set_epoch(3)
        ids = []
        for indices, (images, labels) in zip(loader.index_batches(), loader):
            assert np.array_equal(labels.numpy(), split.labels[indices])
            assert np.array_equal(images.numpy(), split.images[indices])  # the same decoder, the same pixels
            ids += indices.tolist()
        gathered = [None] * world
        dist.all_gather_object(gathered, ids)
        served[name] = gathered
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"world": world, "served": served, "node": os.environ.get("GROUP_RANK")}, f)
    dist.destroy_process_group()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun is not installed")
def test_two_nodes_see_every_image_once(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        for i in range(25):
            y, x = np.mgrid[0:20, 0:20]
            img = np.clip(np.stack([x * 10, y * 10, (x + y) * 5], -1) + rng.normal(0, 4, (20, 20, 3)) + 40 * c, 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(tmp_path / "src" / f"c{c}" / f"{i}.png")
    store = prepare_store(tmp_path / "src", tmp_path / "store", image_size=16, encoding="jpeg", val_fraction=0.2,
                          workers=0, progress_bar=False, log=lambda s: None).store
    n = len(store.split("train"))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = tmp_path / "served.json"
    nodes = [
        subprocess.Popen([str(torchrun) if torchrun.exists() else "torchrun", "--nnodes", "2", "--nproc-per-node", "1",
                          "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "jpeg-nodes",
                          "--max-restarts", "0", str(script), str(store.path), str(out)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = []
    for node in nodes:
        try:
            logs.append(node.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
    assert all(node.returncode == 0 for node in nodes), "\n".join(logs)
    result = json.loads(out.read_text())
    assert result["world"] == 2
    for order, per_rank in result["served"].items():
        together = [i for ids in per_rank for i in ids]
        assert sorted(together) == list(range(n)), f"{order}: every image of the epoch exactly once"
        assert all(ids for ids in per_rank), f"{order}: both nodes read a share"
    assert open_store(store.path).encoding == "jpeg"
