"""JPEG store vs raw store: bytes on disk, decode speed of the candidate decoders, cold and
larger-than-memory reads, and ``alexnet prepare``'s rate on ImageNet-sized JPEGs.

Every rate is given two ways: images per wall-clock second, and images per CPU-second (the
process's CPU time, its threads and worker processes included), which is the rate per core that a
machine shared with other work still measures; on an idle machine they agree up to the threads'
waiting.

Data: ``--images`` generated photo-like 256x256 RGB images (smooth gradients, overlapping discs
and rectangles, mid-frequency texture and a little grain, so JPEG sizes are those of photos, not
of noise), written as a raw store and as a JPEG store at quality 90 with the same code
``alexnet prepare`` uses (:mod:`alexnet.data.jpeg`). Printed, each the median of ``--repeats``
runs with the range:

  1. bytes per image, raw vs JPEG, and the projection for ILSVRC-2012 (1,281,167 + 50,000 images);
  2. decode + random 224x224 crop into uint8 batches, images/s per core, for Pillow, simplejpeg
     and PyTurboJPEG (whichever are installed) on 1 and 2 threads, from payloads in memory;
  3. the Loader (the chosen decoder, threads, read from the store's files) into 256x256 uint8
     batches: page cache warm; cold (``sync; echo 3 > /proc/sys/vm/drop_caches`` first, needs
     root); and larger than memory (cold, and every range dropped from the page cache right after
     it is read, ``posix_fadvise(DONTNEED)``), for the JPEG store and the raw store;
  4. ``alexnet prepare`` images/s per core on ``--prepare-images`` 500x375 JPEG inputs (about
     about 100 KB each, like ILSVRC-2012's), 1 and 2 worker processes, JPEG store.

    python benchmarks/bench_store.py                         # about 8 minutes on 2 busy cores
    python benchmarks/bench_store.py --images 2000 --repeats 1 --prepare-images 100   # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet.atomic import atomic_write_json
from alexnet.data import Loader, open_store, prepare_store
from alexnet.data import jpeg
from alexnet.data.statistics import pixel_statistics, pixel_sums

ILSVRC_IMAGES = 1_281_167 + 50_000
CHUNK = 256


# --- data ------------------------------------------------------------------------------------


def photos(n: int, size: int, seed: int, height: int | None = None, unique: int = 1000) -> np.ndarray:
    """n photo-like uint8 images (height, size, 3). ``unique`` of them are drawn (a smooth colour
    field, ten discs and rectangles with shading, mid-frequency texture, grain); the others are
    made from two of those, each shifted and reflected at random, joined at a random column and
    tinted, so that every image differs and is as complex as the drawn ones."""
    rng = np.random.default_rng(seed)
    h = height or size
    base = np.empty((min(n, unique), h, size, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:size].astype(np.float32)
    yy, xx = yy / h, xx / size
    for i in range(len(base)):
        corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
        img = (corners[0, 0] * ((1 - xx) * (1 - yy))[..., None] + corners[0, 1] * (xx * (1 - yy))[..., None]
               + corners[1, 0] * ((1 - xx) * yy)[..., None] + corners[1, 1] * (xx * yy)[..., None])
        for _ in range(10):
            cx, cy, r = rng.uniform(0, 1, 3)
            if rng.random() < 0.5:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.04 + 0.2 * r) ** 2
            else:
                mask = (np.abs(xx - cx) < 0.25 * r) & (np.abs(yy - cy) < 0.05 + 0.2 * rng.random())
            shade = (0.75 + 0.25 * (xx + yy)[mask])[:, None]
            img[mask] = rng.uniform(0, 255, 3).astype(np.float32) * shade
        coarse = rng.normal(0, 1, (h // 8 + 1, size // 8 + 1)).astype(np.float32)
        texture = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :size]
        texture = (texture + np.roll(texture, 4, 0) + np.roll(texture, 4, 1) + np.roll(texture, (4, 4), (0, 1))) / 4
        img += 18 * texture[..., None] + rng.normal(0, 5, (h, size, 1)).astype(np.float32)
        base[i] = np.clip(img, 0, 255).astype(np.uint8)
    if n <= len(base):
        return base
    out = np.empty((n, h, size, 3), np.uint8)
    out[: len(base)] = base
    for i in range(len(base), n):
        a, b = base[rng.integers(len(base))], base[rng.integers(len(base))]
        a = np.roll(a[:, ::-1] if rng.random() < 0.5 else a, int(rng.integers(size)), axis=1)
        b = np.roll(b[::-1] if rng.random() < 0.5 else b, int(rng.integers(h)), axis=0)
        cut = int(rng.integers(size // 4, 3 * size // 4))
        out[i, :, :cut], out[i, :, cut:] = a[:, :cut], b[:, cut:]
        out[i] = np.clip(out[i].astype(np.int16) + rng.integers(-20, 21, 3), 0, 255)
    return out


def write_stores(images: np.ndarray, root: Path) -> tuple[Path, Path]:
    """The images as a raw store and as a JPEG store (quality 90), in the layout prepare writes."""
    n, s = len(images), images.shape[1]
    labels = (np.arange(n) % 10).astype(np.int64)
    mean_image, eigenvalues, eigenvectors, covariance = pixel_statistics(*pixel_sums(images[:256]), 256)
    paths = []
    for encoding in ("raw", "jpeg"):
        out = root / encoding
        out.mkdir(parents=True)
        if encoding == "raw":
            np.save(out / "train_images.npy", images)
        else:
            (out / "train_jpeg").mkdir()
            rows = []
            for k, start in enumerate(range(0, n, CHUNK)):
                jpeg.write_part(out / "train_jpeg" / jpeg.part_name(k), [jpeg.encode(im) for im in images[start : start + CHUNK]])
                rows.append(jpeg.part_index(out / "train_jpeg", k, min(CHUNK, n - start)))
            np.save(out / "train_index.npy", np.concatenate(rows))
        np.save(out / "train_labels.npy", labels)
        np.savez(out / "stats.npz", mean_image=mean_image, pca_eigenvalues=eigenvalues, pca_eigenvectors=eigenvectors, pixel_covariance=covariance)
        atomic_write_json(out / "manifest.json", {
            "format": "alexnet-store", "format_version": 1, "complete": True, "image_size": s, "channels": 3,
            "encoding": encoding, "classes": [str(c) for c in range(10)], "class_ids": [str(c) for c in range(10)],
            "splits": {"train": {"count": n, "per_class": np.bincount(labels).tolist()}}})
        paths.append(out)
    return paths[0], paths[1]


# --- decoders --------------------------------------------------------------------------------


def decoders() -> dict:
    """name -> decode(bytes, out (S, S, 3) uint8 view). Those not installed are left out."""
    found = {}

    def pillow(data, out):
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", img.size)  # no DCT scaling at the stored size; RGB straight from the decoder
            out[...] = np.asarray(img.convert("RGB"))

    found["pillow"] = pillow
    try:
        import simplejpeg  # noqa: F401

        found["simplejpeg"] = jpeg.decode_into
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        tj = TurboJPEG()
        found["pyturbojpeg"] = lambda data, out: out.__setitem__(Ellipsis, tj.decode(bytes(data), pixel_format=TJPF_RGB))
    except Exception:  # not installed, or no libturbojpeg on the system
        pass
    return found


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (prepare's worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, n: int) -> tuple[float, float]:
    """(images per wall second, images per CPU-second) of ``fn()`` handling n images."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return n / (time.perf_counter() - wall), n / max(cpu_seconds() - cpu, 1e-9)


def decode_crop_rate(decode, payloads: list[bytes], threads: int, batch: int, size: int, crop: int = 224) -> tuple[float, float]:
    """(wall, CPU) images/s: batches of ``batch`` payloads, each decoded, cropped at random into a uint8 batch, on ``threads`` threads."""
    rng = np.random.default_rng(0)
    starts = list(range(0, len(payloads), batch))

    def one_batch(start: int) -> None:
        chunk = payloads[start : start + batch]
        out = np.empty((len(chunk), crop, crop, 3), np.uint8)
        full = np.empty((size, size, 3), np.uint8)
        for j, data in enumerate(chunk):
            decode(data, full)
            y, x = rng.integers(0, size - crop + 1, 2)
            out[j] = full[y : y + crop, x : x + crop]

    def run() -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one_batch, starts))

    return timed(run, len(payloads))


# --- the store -------------------------------------------------------------------------------


def drop_page_cache() -> str | None:
    """Drop the page cache (root only); None if done, else why not."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as e:
        return f"cannot drop the page cache: {e.strerror}"


def loader_rate(store_dir: Path, threads: int, batch: int, drop_behind: bool = False) -> tuple[float, float]:
    split = open_store(store_dir).split("train")
    if drop_behind and split.encoding == "jpeg":
        split.images.drop_behind = True
    loader = Loader(split, batch, shuffle=True, seed=0, drop_last=False, workers=threads, prefetch_batches=2 * threads)
    return timed(lambda: sum(len(labels) for _, labels in loader), len(split))


def drop_raw_behind(store_dir: Path) -> None:
    """The raw store's file out of the page cache (the memmap reads it back from disk)."""
    fd = os.open(store_dir / "train_images.npy", os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def prepare_rate(src: Path, out: Path, workers: int, n: int) -> tuple[float, float]:
    return timed(lambda: prepare_store(src, out, workers=workers, encoding="jpeg", force=True, progress_bar=False, log=lambda s: None), n)


def med(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def both(pairs: list[tuple[float, float]], per: int = 1) -> str:
    """'wall W (range) | CPU C (range)' over repeats; wall rates divided by ``per`` (threads)."""
    return f"{med([w / per for w, _ in pairs])} | per CPU-s {med([c for _, c in pairs])}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-images", type=int, default=2000, help="payloads per decoder timing")
    p.add_argument("--prepare-images", type=int, default=240)
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    results: dict = {"cores": cores, "images": a.images}
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        images = photos(a.images, a.size, seed=0)
        raw_dir, jpeg_dir = write_stores(images, tmp / "stores")
        del images
        print(f"data: {a.images} photo-like {a.size}x{a.size} images, raw and JPEG stores written in {time.perf_counter() - t:.0f} s; {cores} cores", flush=True)

        raw_bytes = a.size * a.size * 3
        index = np.load(jpeg_dir / "train_index.npy")
        sizes = index[:, 2]
        jpeg_total = sum(f.stat().st_size for f in (jpeg_dir / "train_jpeg").iterdir()) + (jpeg_dir / "train_index.npy").stat().st_size
        per_image = jpeg_total / a.images
        results["bytes"] = dict(raw=raw_bytes, jpeg=per_image, jpeg_p10=float(np.percentile(sizes, 10)), jpeg_p90=float(np.percentile(sizes, 90)))
        print(f"\n1. bytes per image: raw {raw_bytes:,}, JPEG q90 {per_image:,.0f} (payloads p10-p90 {np.percentile(sizes, 10):,.0f}-{np.percentile(sizes, 90):,.0f}): "
              f"JPEG / raw {per_image / raw_bytes:.3f} (target <= 0.2)")
        print(f"   ILSVRC-2012 ({ILSVRC_IMAGES:,} images): raw {ILSVRC_IMAGES * raw_bytes / 1e9:,.0f} GB, JPEG {ILSVRC_IMAGES * per_image / 1e9:,.0f} GB", flush=True)

        store = open_store(jpeg_dir).split("train").images
        payloads = [bytes(v) for v in store._payloads(np.arange(min(a.decode_images, a.images)))]
        print(f"\n2. decode + random 224 crop into uint8 batches of {a.batch}, {len(payloads)} payloads in memory; images/s per thread "
              f"(wall) | per CPU-second; median of {a.repeats} (range):")
        results["decode"] = {}
        for name, fn in decoders().items():
            row = {}
            for threads in (1, 2):
                row[threads] = [decode_crop_rate(fn, payloads, threads, a.batch, a.size) for _ in range(a.repeats)]
            results["decode"][name] = row
            print(f"   {name:12s} 1 thread: {both(row[1])}\n   {'':12s} 2 threads: {both(row[2], 2)}", flush=True)

        print(f"\n3. Loader from the store files into 256x256 uint8 batches of {a.batch}, 2 threads, all {a.images} images shuffled; "
              "images/s (wall) | per CPU-second:")
        results["loader"] = {}
        why_not = drop_page_cache()
        if why_not:
            print(f"   ({why_not}: the 'cold' rows below are not cold)")
        for label, store_dir in (("JPEG", jpeg_dir), ("raw", raw_dir)):
            rows = {"warm": [], "cold": [], "larger than memory": []}
            for _ in range(a.repeats):
                loader_rate(store_dir, 2, a.batch)  # warm the cache
                rows["warm"].append(loader_rate(store_dir, 2, a.batch))
                drop_page_cache()
                rows["cold"].append(loader_rate(store_dir, 2, a.batch))
                drop_page_cache()
                if label == "raw":
                    drop_raw_behind(store_dir)  # the memmap has no per-read hook: only cold here
                    rows["larger than memory"].append(loader_rate(store_dir, 2, a.batch))
                else:
                    rows["larger than memory"].append(loader_rate(store_dir, 2, a.batch, drop_behind=True))
            results["loader"][label] = rows
            for k, v in rows.items():
                print(f"   {label:4s} {k:18s} {both(v)}", flush=True)

        print(f"\n4. alexnet prepare, JPEG store, on {a.prepare_images} 500x375 JPEG inputs (quality 97, photo-like):")
        src = tmp / "src" / "train" / "c0"
        src.mkdir(parents=True)
        big = photos(a.prepare_images, 500, seed=1, height=375)
        kb = []
        for i, im in enumerate(big):
            Image.fromarray(im).save(src / f"{i}.jpg", quality=97)
            kb.append((src / f"{i}.jpg").stat().st_size / 1000)
        (tmp / "src" / "train" / "c1").mkdir()
        for i in range(2):  # a second class, for a valid data set
            Image.fromarray(big[i]).save(tmp / "src" / "train" / "c1" / f"{i}.jpg", quality=95)
        n = a.prepare_images + 2
        print(f"   inputs: {np.mean(kb):.0f} KB on average")
        results["prepare"] = {}
        for workers in (1, 2):
            rates = [prepare_rate(tmp / "src", tmp / "prep", workers, n) for _ in range(a.repeats)]
            results["prepare"][workers] = rates
            per_cpu = statistics.median(c for _, c in rates)
            print(f"   {workers} worker(s): images/s per worker (wall) | per CPU-s: {both(rates, workers)}; "
                  f"ILSVRC-2012 on 16 cores at the CPU-s rate: {ILSVRC_IMAGES / (16 * per_cpu) / 60:.0f} minutes", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
