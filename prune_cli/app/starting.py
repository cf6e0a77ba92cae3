"""The first thing a terminal shows: ``prune-run: starting...`` at once, while the config is checked and torch
loads (about two seconds), wiped by whatever is written next.

The standard streams are wrapped so that the first write to either erases the line first; everything else
passes straight through, so loggers, rich and error messages created later behave as without it. Nothing
is shown off a terminal (logs and pipes get no stray characters)."""
from __future__ import annotations

import sys

LINE = "prune-run: starting..."
ERASE = "\r\x1b[K"


class _ErasesFirst:
    def __init__(self, stream, shown: list):
        self._stream, self._shown = stream, shown

    def write(self, text):
        if self._shown[0]:
            self._shown[0] = False
            self._shown[1].write(ERASE)
            self._shown[1].flush()
        return self._stream.write(text)

    def __getattr__(self, name):  # isatty, fileno, flush, encoding, ... of the real stream
        return getattr(self._stream, name)


def show() -> None:
    """On a terminal: print the line (no newline) and arm the streams to erase it on their first write."""
    err = sys.stderr
    if not (hasattr(err, "isatty") and err.isatty()):
        return
    err.write(LINE)
    err.flush()
    shown = [True, err]
    sys.stdout, sys.stderr = _ErasesFirst(sys.stdout, shown), _ErasesFirst(err, shown)
