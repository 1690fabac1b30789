"""Shared test set-up: one CPU thread and a fixed seed for every test; Triton's interpreter without a GPU.

The test models are small, so a second thread gains little; on a busy machine two OpenMP
threads spin-wait on each other and the suite ran several times slower.

Without CUDA the Triton kernels run in Triton's interpreter on CPU tensors. Triton reads
TRITON_INTERPRET when it is imported, and torch imports it early (torch._dynamo does, and
alexnet.kernels uses torch.compiler), so it is set here, before any test module is imported.

Small stores are shared: ``shared_store`` builds each set of ``helpers.make_store`` arguments once a session.
"""

import inspect
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and time, but the lock file that readers of a store take."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".alexnet.lock"}


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory):
    """``shared_store(**kwargs)``: the store ``helpers.make_store(root, **kwargs)`` builds (its images in
    ``store.parent / "src"``), built once a session for every module that asks with the same arguments.

    Read only: a test that changes or damages a store builds its own. A shared store whose files changed
    fails the session at its end.
    """
    from helpers import make_store

    signature = inspect.signature(make_store)
    built: dict[tuple, tuple[Path, dict]] = {}

    def get(**kwargs) -> Path:
        bound = signature.bind(None, **kwargs)
        bound.apply_defaults()
        key = tuple(sorted((name, value) for name, value in bound.arguments.items() if name != "root"))
        if key not in built:
            store = make_store(tmp_path_factory.mktemp("shared-store"), **kwargs)
            built[key] = store, _files(store.parent)
        return built[key][0]

    yield get
    changed = [str(store) for store, files in built.values() if _files(store.parent) != files]
    assert not changed, f"a test changed the shared store(s) {changed}: a test that changes a store builds its own"
