"""Shared test set-up: one CPU thread and a fixed seed for every test.

The test models are small, so a second thread gains little; on a busy machine two OpenMP
threads spin-wait on each other and the suite ran several times slower.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
