"""``--help`` of the commands that are not Hydra applications (prune-search, prune-sensitivity): the module's
description as plain text (its reST double backquotes become single ones) and a table of the command's own
settings with their defaults and meaning."""
from __future__ import annotations

from typing import Sequence


def render(doc: str, settings: Sequence[tuple[str, str, str]], overrides_note: str) -> str:
    """``settings``: (key, default, meaning) rows."""
    text = doc.strip().replace("``", "`")
    width = max(len(key) for key, _, _ in settings)
    default_width = max(len(default) for _, default, _ in settings)
    rows = [f"  {key.ljust(width)}  {default.ljust(default_width)}  {meaning}" for key, default, meaning in settings]
    return "\n".join([text, "", "Settings (key=value; default, meaning):", *rows, "", overrides_note])
