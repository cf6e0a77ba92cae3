"""The run's log file (``prune-run.log``), as Hydra's job logging writes it, with two promises of our own:

- it is opened with ``O_NOFOLLOW``: a symbolic link planted where the log goes is refused by the operating
  system, not followed (the run-directory check refuses it first; this closes the gap between the two);
- a write that fails (a full or vanished disk) is reported once, in one line, and the file is then left
  alone; logging's default prints a traceback for every record that follows.
"""
from __future__ import annotations

import logging
import os
import sys


class LogFile(logging.StreamHandler):
    def __init__(self, filename: str, encoding: str = "utf-8"):
        self.filename = os.fspath(filename)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        super().__init__(os.fdopen(os.open(self.filename, flags, 0o666), "a", encoding=encoding))
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or error or "unknown error"
        print(f"prune-run: cannot write the log {self.filename} ({reason}); the run goes on without it",
              file=sys.stderr)

    def close(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                try:
                    self.flush()
                    self.stream.close()
                except OSError:
                    pass  # the failure was reported when it happened
                self.stream = None
        finally:
            self.release()
        super().close()
