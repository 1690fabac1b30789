"""Fault injection for crash tests: die by SIGKILL at a named point of the code.

``ALEXNET_KILL_AT="checkpoint-write:2"`` kills the process the 2nd time it reaches the point
``checkpoint-write``; ``ALEXNET_KILL_SIGNAL=SIGTERM`` sends that signal instead (a scheduler's
polite stop). Unset (always, outside tests) this costs one dictionary lookup; in the training step,
where that would be paid every step, :func:`armed` is asked once per epoch instead.
Points: ``step`` (after a step's update), ``evaluate`` (inside validation),
``checkpoint-write`` (half of a checkpoint's bytes written), ``metrics-append``, ``prepare-chunk``,
``export-write`` (half of an export file's bytes written), ``folder-swap`` (before a folder built
beside its target is swapped in, and after, before the old one is deleted).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Callable

_reached: Counter = Counter()


def kill_point(name: str) -> None:
    spec = os.environ.get("ALEXNET_KILL_AT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(count or 1):
        os.kill(os.getpid(), getattr(signal, os.environ.get("ALEXNET_KILL_SIGNAL", "SIGKILL")))


def armed(name: str) -> Callable[[], None] | None:
    """``kill_point(name)`` when ``ALEXNET_KILL_AT`` names the point ``name``, else None: a caller in
    a hot loop asks once and calls nothing when it is None."""
    if os.environ.get("ALEXNET_KILL_AT", "").partition(":")[0] != name:
        return None
    return lambda: kill_point(name)
