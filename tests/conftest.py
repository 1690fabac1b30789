"""Shared test set-up: one CPU thread and a fixed seed for every test; Triton's interpreter without a GPU.

The test models are small, so a second thread gains little; on a busy machine two OpenMP
threads spin-wait on each other and the suite ran several times slower.

Without CUDA the Triton kernels run in Triton's interpreter on CPU tensors. Triton reads
TRITON_INTERPRET when it is imported, and torch imports it early (torch._dynamo does, and
alexnet.kernels uses torch.compiler), so it is set here, before any test module is imported.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
