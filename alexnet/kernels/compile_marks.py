"""Marks for torch.compile that cost nothing at import time.

``torch.compiler.assume_constant_result`` imports ``torch._dynamo`` (and with it triton, about
1.5 s) when it decorates, so every ``alexnet`` command would pay for it even without compiling.
What it does is set one attribute on the function; :func:`constant_result` sets the same one, and
``tests/test_lrn.py`` checks that the two still agree on the installed torch.
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def constant_result(fn: F) -> F:
    """As ``torch.compiler.assume_constant_result``: torch.compile calls ``fn`` once while tracing
    and uses its result as a constant."""
    fn._dynamo_marked_constant = True
    return fn
