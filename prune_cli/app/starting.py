"""The first thing a terminal shows: ``prune-run: starting...`` at once, while the config is checked and torch
loads (about two seconds), wiped by whatever is written next.

While the command runs, the standard streams are wrapped so that the first write to either erases the line
first; everything else passes straight through, so loggers, rich and error messages created later behave as
without it. Nothing is shown off a terminal (logs and pipes get no stray characters). Only the console entry
point uses it, and it gives the original streams back when the command ends (``showing_start``)."""
from __future__ import annotations

import contextlib
import sys

LINE = "prune-run: starting..."
ERASE = "\r\x1b[K"


class _ErasesFirst:
    def __init__(self, stream, shown: list):
        self._stream, self._shown = stream, shown

    def write(self, text):
        erase()
        return self._stream.write(text)

    def writelines(self, lines):
        erase()
        return self._stream.writelines(lines)

    def __getattr__(self, name):  # isatty, fileno, flush, encoding, ... of the real stream
        if name.startswith("__") or name in ("_stream", "_shown"):  # copying or unpickling a half-built one
            raise AttributeError(name)
        return getattr(self._stream, name)


_SHOWN = [False, None]  # [the line is on the terminal, the stream it is on]


def erase() -> None:
    """Wipe the line if it is still shown (the first write does; so does ``prune-run`` before it exits)."""
    if _SHOWN[0]:
        _SHOWN[0] = False
        _SHOWN[1].write(ERASE)
        _SHOWN[1].flush()


@contextlib.contextmanager
def showing_start():
    """On a terminal: print the line (no newline) and arm the streams to erase it on their first write; at the
    end, wipe it if nothing was written and put the original streams back."""
    out, err = sys.stdout, sys.stderr
    import prune_cli.distributed as distributed
    if not (hasattr(err, "isatty") and err.isatty()) or not distributed.is_main():  # under torchrun: rank 0 says it
        yield
        return
    err.write(LINE)
    err.flush()
    _SHOWN[:] = [True, err]
    sys.stdout, sys.stderr = _ErasesFirst(out, _SHOWN), _ErasesFirst(err, _SHOWN)
    try:
        yield
    finally:
        erase()  # a command that wrote nothing leaves no half line before the shell's prompt
        sys.stdout, sys.stderr = out, err
