"""Shared test helpers, not a test file: image trees, awkward files, tiny recipes and stores, gloo ranks.

The test files import this as ``helpers`` (``from helpers import make_tree``): pytest puts tests/ on
sys.path (there is no tests/__init__.py). Test files never import each other; what two of them need
lives here, once.

Image trees
    ``write_image_folder``: a learnable ImageFolder tree (class_0, class_1, ...: colour and stripe
    direction tell the classes apart); ``make_store``: that tree prepared into a store;
    ``make_tree``: pure-noise images of random sizes under named classes (for ``alexnet prepare``);
    ``write_bad_files`` / ``write_convertible_files``: one file of every awkward kind.
Recipes
    ``TINY``: a recipe that trains in about a second on one CPU thread; ``QUIET``: no progress bar, no log.
Ranks
    ``run_ranks(fn, world_size, *args)`` runs ``fn(dist, *args)`` in gloo ranks on 127.0.0.1;
    ``start`` and ``set_rank_env`` are the pieces, for tests that bring their own rank entry.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image

from alexnet.config import TrainConfig
from alexnet.data.prepare import prepare_store
from alexnet.distributed import cleanup, init_from_env

# --- image trees ------------------------------------------------------------------------------

PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def write_image_folder(root: Path, classes: int = 3, per_class: int = 16, size: int = 40, seed: int = 0,
                       val_per_class: int | None = None) -> Path:
    """PNGs under ``root/{train,val}/class_{c}``: classes differ in colour and in a stripe's direction, with noise.

    Each class gets ``per_class`` images in all. Without ``val_per_class`` every fourth image (0, 4, 8, ...)
    goes to val; with it, the first ``val_per_class`` images of each class do. At most four classes.
    """
    if classes > len(PALETTE):
        raise ValueError(f"at most {len(PALETTE)} classes, got {classes}")
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8) + np.array(PALETTE[c], np.uint8) // 2
            if c % 2:
                img[:, size // 3 : size // 2] = 255
            else:
                img[size // 3 : size // 2, :] = 255
            is_val = i % 4 == 0 if val_per_class is None else i < val_per_class
            folder = root / ("val" if is_val else "train") / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
    return root


def make_store(root: Path, classes: int = 3, per_class: int = 16, seed: int = 0, size: int = 36, image_size: int = 32,
               val_per_class: int | None = None) -> Path:
    """``write_image_folder`` into ``root/src``, prepared at ``image_size`` into ``root/store``; returns the store."""
    write_image_folder(root / "src", classes, per_class, size=size, seed=seed, val_per_class=val_per_class)
    prepare_store(root / "src", root / "store", image_size=image_size, progress_bar=False, log=lambda s: None)
    return root / "store"


def noise_image(rng: np.random.Generator, width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = 3 if mode == "RGB" else 1
    a = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(a if channels == 3 else a[..., 0])


def make_tree(root: Path, classes=("cat", "dog"), per_class: int = 4, val_per_class: int = 2, seed: int = 0,
              mode: str = "RGB") -> Path:
    """Noise PNGs of random sizes (16..39 px a side) under ``root/{train,val}/<class>``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise_image(rng, int(rng.integers(16, 40)), int(rng.integers(16, 40)), mode).save(root / split / c / f"{i}.png")
    return root


# --- awkward files ----------------------------------------------------------------------------

RED, BLUE = (220, 20, 30), (20, 30, 220)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height (an IHDR and IEND, no pixels): a decompression bomb's header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def near(pixel, want, tolerance) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(want, int)) <= tolerance))


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file of every awkward kind; returns {name: expected reason prefix}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are not pixels\n")
    good = jpeg_bytes(Image.new("RGB", (64, 48), RED))
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "garbage.jpg").write_bytes(good[:20] + bytes(range(256)) * 4)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), RED).save(buf, "PNG")
    png = buf.getvalue()
    (folder / "truncated.png").write_bytes(png[:-30])
    at = png.index(b"IDAT") + 8
    (folder / "corrupt.png").write_bytes(png[:at] + bytes(b ^ 0x5A for b in png[at : at + 16]) + png[at + 16 :])
    png_header_only(folder / "bomb.png", 40_000, 40_000)
    return {
        "empty.png": "empty file",
        "notes.jpg": "not an image",
        "truncated.jpg": "corrupt or truncated",
        "garbage.jpg": "not an image",
        "corrupt.png": "corrupt or truncated",
        "truncated.png": "corrupt or truncated",
        "bomb.png": "too large",
    }


def write_convertible_files(folder: Path) -> dict:
    """Files that must be converted; returns {name: check(array (S, S, 3))} for S = 16."""
    folder.mkdir(parents=True, exist_ok=True)
    checks = {}

    # EXIF orientation 6 (stored rotated: rotate 90 degrees clockwise to show). Shown upright the
    # image is 16 wide and 24 tall, red on top, blue below.
    upright = Image.new("RGB", (16, 24), BLUE)
    upright.paste(RED, (0, 0, 16, 12))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "exif_rotated.jpg").write_bytes(jpeg_bytes(stored, exif=exif.tobytes()))
    checks["exif_rotated.jpg"] = lambda a: near(a[1, 8], RED, 12) and near(a[14, 8], BLUE, 12)

    cmyk = (10, 200, 40, 30)  # C, M, Y, K
    Image.new("CMYK", (32, 32), cmyk).save(folder / "cmyk.jpg", quality=95)
    want = tuple(round((255 - v) * (255 - cmyk[3]) / 255) for v in cmyk[:3])
    checks["cmyk.jpg"] = lambda a, want=want: near(a[8, 8], want, 4)

    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0] + list(RED) + [0] * (256 * 3 - 6))
    pal.paste(1, (16, 0, 32, 32))  # right half red, left half index 0 = transparent
    pal.save(folder / "palette_transparent.png", transparency=0)
    checks["palette_transparent.png"] = lambda a: near(a[8, 2], (255, 255, 255), 0) and near(a[8, 13], RED, 0)

    rgba = Image.new("RGBA", (32, 32), (*BLUE, 128))
    rgba.save(folder / "half_alpha.png")
    blend = tuple(round(v * 128 / 255 + 255 * (1 - 128 / 255)) for v in BLUE)
    checks["half_alpha.png"] = lambda a, blend=blend: near(a[8, 8], blend, 1)

    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(folder / "sixteen_bit.png")
    checks["sixteen_bit.png"] = lambda a: near(a[8, 8], (round(40000 / 257),) * 3, 1)

    Image.new("L", (32, 32), 77).save(folder / "gray.png")
    checks["gray.png"] = lambda a: near(a[8, 8], (77, 77, 77), 0)
    return checks


# --- recipes ----------------------------------------------------------------------------------

# A tiny network (3x3 stem, 1/8 width, 28-px crops of the 32-px stores above) for end-to-end runs.
TINY = TrainConfig(stem="small", width=0.125, crop_size=28, batch_size_per_device=16, epochs=1, loader_workers=1,
                   init="he", input_scale=1 / 64)
QUIET = dict(show_progress=False, log=lambda s: None)


# --- ranks ------------------------------------------------------------------------------------
# gloo ranks as CPU processes on 127.0.0.1. Each rank gets torchrun's variables (RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR, MASTER_PORT) on a free port. The ranks are forked by a forkserver that has
# imported torch once, so each start is cheap; an exception in a rank fails the test with that rank's
# traceback (``mp.ProcessRaisedException``), and a rank that dies fails it with ``mp.ProcessExitedException``.

# Imported once by the forkserver that forks every rank (DDP's first use imports torch._dynamo). A
# pytest process starts one forkserver, so one list serves every test file; a name that does not
# import is skipped by the forkserver.
PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "matplotlib.pyplot",
           "alexnet.distributed", "alexnet.towers", "alexnet.training"]
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


def wait_for_orphans(store: Path) -> None:
    """Until the killed run's worker processes are gone: they die with their parent (PR_SET_PDEATHSIG)
    and hold the folder's lock until they do; how soon depends on the machine's load."""
    import fcntl

    hang = time.monotonic() + 120
    if not (store / ".alexnet.lock").exists():
        return
    with open(store / ".alexnet.lock", "rb") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < hang, "worker processes outlived their killed parent"
                time.sleep(0.01)


def quiet_prepare(source, out, **kw):
    """``prepare_store`` in this process, without progress bar or log lines."""
    kw.setdefault("workers", 0)
    kw.setdefault("progress_bar", False)
    kw.setdefault("log", lambda message: None)
    return prepare_store(source, out, **kw)


def prepare_killed_mid_run(source: Path, out: Path, *, chunks: int = 3, before_kill=None, **kw) -> None:
    """Run ``prepare_store(source, out, **kw)`` in a child process that stops itself (blocks for ever)
    right after its progress record first says ``chunks`` chunks are done, and says so on stdout;
    then SIGKILL it, so the kill lands mid-run whatever the machine's speed. ``before_kill(pid)`` runs
    while the child is stopped."""
    code = textwrap.dedent(
        f"""
        import threading
        from alexnet.data.progress import Progress
        save = Progress.save

        def save_then_stop(self, path):
            save(self, path)
            if sum(int(d.sum()) for d in self.done.values()) >= {chunks}:
                print("stopped", flush=True)
                threading.Event().wait()

        Progress.save = save_then_stop
        from alexnet.data.prepare import prepare_store
        prepare_store({str(source)!r}, {str(out)!r}, checkpoint_seconds=0, progress_bar=False, **{kw!r})
        """
    )
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "stopped\n", "the run ended before it stopped itself"
        if before_kill is not None:
            before_kill(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# --- Triton's compiler without a GPU ------------------------------------------------------------
# The interpreter (TRITON_INTERPRET=1) skips Triton's compiler. ``compile_for_sm90(body)`` runs it in a
# fresh process without the interpreter: ``body`` calls ``build(kernel, signature, constexprs)``, which
# compiles to PTX for sm_90 and fails on any 64-bit integer division (emulated on the GPU: 10x slower).
SM90_PRELUDE = """
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def build(fn, sig, consts):
    sig = {**sig, **{name: "constexpr" for name in consts}}
    ptx = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    slow = sorted(set(re.findall(r"(?:div|rem)[.][su]64", ptx)))
    assert not slow, f"{fn.__name__}: 64-bit integer division in the PTX: {slow}"
"""


def compile_for_sm90(body: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    script = SM90_PRELUDE + body + '\nprint("compiled")\n'
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


def lrn_numpy(x, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> np.ndarray:
    """Section 3.3's formula in float64 NumPy, a reference written apart from the package: b_i = a_i /
    (k + alpha sum_{j in window(i)} a_j^2)^beta, windows [i - size//2, i + (size-1)//2] within each group."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    per = x.shape[1] // groups
    for g in range(groups):
        for i in range(per):
            lo, hi = max(0, i - size // 2), min(per - 1, i + (size - 1) // 2)
            s = (x[:, g * per + lo : g * per + hi + 1] ** 2).sum(axis=1)
            out[:, g * per + i] = x[:, g * per + i] / (k + alpha * s) ** beta
    return out


def torchvision_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's AlexNet in eval mode, written out with torch.nn.functional and reading ``sd`` by
    torchvision's names: a reference written apart from the package's layout and key translation."""
    F = torch.nn.functional
    x = F.max_pool2d(F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], stride=4, padding=2)), 3, 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, sd["features.3.weight"], sd["features.3.bias"], padding=2)), 3, 2)
    x = F.relu(F.conv2d(x, sd["features.6.weight"], sd["features.6.bias"], padding=1))
    x = F.relu(F.conv2d(x, sd["features.8.weight"], sd["features.8.bias"], padding=1))
    x = F.max_pool2d(F.relu(F.conv2d(x, sd["features.10.weight"], sd["features.10.bias"], padding=1)), 3, 2)
    x = torch.flatten(F.adaptive_avg_pool2d(x, (6, 6)), 1)
    x = F.relu(F.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"]))  # dropout: identity in eval
    x = F.relu(F.linear(x, sd["classifier.4.weight"], sd["classifier.4.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])
