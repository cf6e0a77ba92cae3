"""Every ``prune-run`` command in README.md and docs/*.md composes and passes the config checks as written.

Each command's overrides (a sweep's lists reduced to each of their values in turn) are composed and checked
in-process, which is what ``prune-run`` does before any work; the own-model walk-through, whose commands need
the files it creates, runs for real in tests/test_docs_own_model.py."""
import os
import re
import shlex
from pathlib import Path

import pytest

from prune_cli.config import compose_config
from prune_cli.validate import validate

ROOT = Path(__file__).resolve().parents[1]
NEEDS_FILES = ("--config-dir",)  # commands of the walk-throughs that make their own files first


def _documented(prefix: str) -> list[tuple[str, str]]:
    """(file, command) for every line of a fenced code block in README.md and docs/*.md that starts so."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            found += [(path.name, line.strip()) for line in block.replace("\\\n", " ").splitlines()
                      if line.strip().startswith(prefix)]
    return found


def documented_commands() -> list[tuple[str, str]]:
    return [(where, line) for where, line in _documented("prune-run ")
            if not any(flag in line for flag in NEEDS_FILES)]


def _values(override: str) -> list[str]:
    """``key=a,b,c`` (a sweep) -> each single-valued override; anything else as it is."""
    key, sep, value = override.partition("=")
    if not sep or any(c in value for c in "[]{}()"):
        return [override]
    return [f"{key}={v}" for v in value.split(",")]


def variants(command: str) -> list[list[str]]:
    words = [os.path.expandvars(w) for w in shlex.split(command, comments=True)[1:] if w not in ("-m", "--multirun")]
    options = [_values(w) for w in words]
    width = max(len(o) for o in options)
    return [[o[min(i, len(o) - 1)] for o in options] for i in range(width)]


COMMANDS = documented_commands()


def test_the_docs_have_commands_to_check():
    assert len(COMMANDS) >= 12


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[10:50]}" for w, c in COMMANDS])
def test_a_documented_command_composes_and_passes_the_checks(where, command):
    for overrides in variants(command):
        validate(compose_config(overrides))



def test_documented_prune_compare_commands_parse():
    """Their options exist and their values parse (the directories are the reader's own)."""
    from prune_cli.comparison import _parser
    commands = _documented("prune-compare ")
    assert len(commands) >= 4
    for _, command in commands:
        _parser().parse_args(shlex.split(command, comments=True)[1:])  # exits 2 on an unknown option
