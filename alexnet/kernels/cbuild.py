"""Build a C source into a shared library on first use, cache it, and load it with ctypes.

The CPU kernel (:mod:`.lrn_cpu`) is plain C compiled by the system's
compiler (``cc -O3 -march=native``) into a per-user cache directory (``~/.cache/alexnet/kernels``,
or the temp directory where that is not writable). The file name hashes the source, the
compiler, the flags and the CPU model and flags, since ``-march=native`` code is only valid on
the CPU it was built for. The build goes to a temporary name and is renamed into place, so a
concurrent build (two ranks, two tests) never loads half a file. ctypes releases the GIL
during a call.

Where no compiler is found or the build fails, :meth:`CLibrary.get` returns None after one
warning naming the reason and the fallback, and the callers use eager torch instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

# C helpers shared by the kernels: prepend to a kernel's source.
HELPERS_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>

#define MAX_THREADS 64

/* A fresh output of tens of MB is mapped by the allocator page by page on first write; 4 KB
   page faults then cost more than the arithmetic. Asking for 2 MB pages before the first
   write removes almost all of them (only a hint; a no-op where THP is off). */
static void advise_huge_pages(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)1 << 21;
    uintptr_t first = ((uintptr_t)p + huge - 1) & ~(huge - 1), last = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (last > first) madvise((void *)first, last - first, MADV_HUGEPAGE);
#else
    (void)p; (void)bytes;
#endif
}

/* fn(jobs + i * job_bytes) for i < count, job 0 in the calling thread, the others in threads
   (in the calling thread too if a thread cannot start). Nonzero if any fn returned non-NULL. */
static int run_jobs(void *(*fn)(void *), void *jobs, size_t job_bytes, int count) {
    pthread_t tid[MAX_THREADS];
    int i, started = 1, failed = 0;
    char *base = jobs;
    for (; started < count; started++)
        if (pthread_create(&tid[started], NULL, fn, base + started * job_bytes)) break;
    for (i = started; i < count; i++) failed |= fn(base + i * job_bytes) != NULL;
    failed |= fn(base) != NULL;
    for (i = 1; i < started; i++) { void *r; pthread_join(tid[i], &r); failed |= r != NULL; }
    return failed;
}

static int clamp_threads(int threads, int64_t items) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > items) threads = (int)items;
    return threads < 1 ? 1 : threads;
}
"""

COMPILE_FLAGS = ("-O3", "-fno-math-errno", "-fPIC", "-shared", "-pthread")
NATIVE_FLAGS = ("-march=native",)  # AVX2/AVX-512 where the CPU has them; dropped if refused


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "alexnet" / "kernels"


def _cpu_description() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def compile_shared(name: str, source: str, flags: tuple[str, ...] = ()) -> Path:
    """The path of ``source`` built as a shared library (built now unless cached)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    base = (*COMPILE_FLAGS, *flags)
    key = "\n".join([source, compiler, *base, *NATIVE_FLAGS, platform.machine(), _cpu_description()])
    file_name = f"{name}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / f"alexnet-kernels-{os.getuid()}"
        cache.mkdir(parents=True, exist_ok=True)
    lib_path = cache / file_name
    if not lib_path.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, out = Path(tmp) / f"{name}.c", Path(tmp) / file_name
            src.write_text(source)
            for extra in (NATIVE_FLAGS, ()):
                result = subprocess.run(
                    [compiler, *base, *extra, str(src), "-o", str(out), "-lm"],
                    capture_output=True, text=True, timeout=120,
                )
                if result.returncode == 0:
                    break
            else:
                raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
            os.replace(out, lib_path)  # atomic: a concurrent build never sees half a file
    return lib_path


class CLibrary:
    """A C library built and loaded on the first :meth:`get`; None there (one warning) if impossible.

    Args:
        name: file name stem, and the kernel's name in the warning.
        source: the C source.
        declare: sets argtypes/restype on the loaded library.
        fallback: what happens instead, for the warning ("eager torch, several times slower").
        flags: extra compiler flags.
    """

    def __init__(self, name: str, source: str, declare: Callable[[ctypes.CDLL], None], *, fallback: str,
                 flags: tuple[str, ...] = ()) -> None:
        self.name, self.source, self.declare, self.fallback, self.flags = name, source, declare, fallback, flags
        self._lock = threading.Lock()
        self.loaded: ctypes.CDLL | None = None
        self._error: str | None = None

    def _compile(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(str(compile_shared(self.name, self.source, self.flags)))
        self.declare(lib)
        return lib

    def get(self) -> ctypes.CDLL | None:
        if self.loaded is not None or self._error is not None:
            return self.loaded
        with self._lock:
            if self.loaded is None and self._error is None:
                try:
                    self.loaded = self._compile()
                except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
                    self._error = f"{type(e).__name__}: {e}"
                    warnings.warn(
                        f"{self.name}: the compiled CPU kernel is unavailable ({self._error}); falling back "
                        f"to {self.fallback}. A C compiler (gcc or clang) enables it.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        return self.loaded

    def available(self) -> bool:
        return self.get() is not None

    def unavailable_reason(self) -> str | None:
        """Why the library could not be built (None when it was)."""
        self.get()
        return self._error

    def reset(self) -> None:
        """Forget the loaded library or the error (tests)."""
        with self._lock:
            self.loaded, self._error = None, None
