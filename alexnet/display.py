"""Names as people see them: file and class names that are not valid UTF-8, made printable.

On POSIX a file name is bytes. Python hands a name that is not valid UTF-8 to us as a ``str``
holding lone surrogates (``os.fsdecode``'s "surrogateescape": byte 0xFF becomes U+DCFF), which
round-trips to the original bytes but cannot be written as UTF-8: printing it, putting it into an
HTML page or drawing it in a figure fails. :func:`printable` replaces each such byte with U+FFFD
(the replacement character), for display only; the stored name keeps the original bytes.
"""

from __future__ import annotations

import sys

REPLACEMENT = "\ufffd"


def on_terminal() -> bool:
    """Whether progress bars are worth drawing: standard error is a terminal. Written to a log file,
    every redraw would be kept (hundreds of kilobytes a run); the epoch lines say enough there."""
    return sys.stderr.isatty()


def printable(text: str) -> str:
    """``text`` with every byte that is not valid UTF-8 shown as U+FFFD; valid text is unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # surrogate-escaped bytes (from os.listdir, sys.argv): one replacement per bad byte
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # other lone surrogates (e.g. from JSON "\ud800"): one per surrogate
        return "".join(REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
