"""Process-wide settings the CLI applies once per command (``alexnet.devices.apply_process_settings``)."""

from __future__ import annotations

import pytest
import torch

from alexnet.devices import apply_process_settings


@pytest.fixture
def restored():
    """Put torch's process-wide settings back as they were after each test."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    yield
    threads, deterministic, warn_only, benchmark = saved
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def test_cudnn_times_its_algorithms_unless_the_run_is_deterministic(restored):
    apply_process_settings(1, False, log=lambda s: None)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1
    apply_process_settings(0, True, log=lambda s: None)
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
