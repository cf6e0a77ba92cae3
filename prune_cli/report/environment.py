"""``report.json``'s ``environment``: what a reader needs to reproduce a run or to tell two runs' settings
apart (versions, the machine, the launch directory's commit, the command that reruns it).

It is a stamp, not part of the run's identity: the fingerprint ignores it, so the same config run on another
machine or torch version resumes and compares as the same run.
"""
from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
from typing import Optional, Sequence

# torch as this process loaded it (its ``__version__`` carries the build, e.g. ``+cu130``); the others from their
# installed metadata (importing torchvision only to read its version would cost a run half a second).
DISTRIBUTIONS = {"prune_cli": "prune-cli", "torchvision": "torchvision", "hydra": "hydra-core"}


def _version(distribution: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(launch_dir: str, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", launch_dir, *args], capture_output=True, text=True, timeout=5,
                              check=False)
    except (OSError, subprocess.SubprocessError):  # no git on this machine, or it hangs on a network drive
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(launch_dir: str) -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the repository the command was launched in (dirty: tracked files differ from the
    commit); (None, None) outside a repository."""
    commit = _git(launch_dir, "rev-parse", "HEAD")
    if not commit:
        return None, None
    return commit, bool(_git(launch_dir, "status", "--porcelain", "--untracked-files=no"))


def command_line(overrides: Sequence[str]) -> str:
    """The command that reruns this run (a sweep's job included): ``prune-run`` with its overrides, quoted for
    a POSIX shell. The run directory is left out: a rerun chooses its own, or resumes with the same one."""
    return shlex.join(["prune-run", *overrides])


def environment(device, overrides: Sequence[str], launch_dir: Optional[str] = None) -> dict:
    import torch
    launch_dir = launch_dir or os.getcwd()
    cuda = getattr(device, "type", str(device)) == "cuda"
    commit, dirty = git_state(launch_dir)
    return {
        "prune_cli": _version(DISTRIBUTIONS["prune_cli"]),
        "torch": str(torch.__version__),  # a str subclass that weights_only loading refuses before torch 2.14
        "torchvision": _version(DISTRIBUTIONS["torchvision"]),
        "hydra": _version(DISTRIBUTIONS["hydra"]),
        "python": platform.python_version(),
        "cuda": str(torch.version.cuda) if torch.version.cuda else None,
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "host": socket.gethostname(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": command_line(overrides),
    }
