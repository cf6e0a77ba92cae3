import json
import os
import subprocess
import sys
from pathlib import Path

# Tiny models run fastest on one thread, and on a shared 2-core machine a second thread only spin-waits.
# Set before torch is imported; subprocesses (prune-run as a user runs it) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Small and fast: the real numbers live in benchmarks/, not here.
TINY = ["train.epochs=3", "finetune.epochs=2", "checkpoint.every_s=0", "measure.latency_budget_s=0.01"]


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own dense cache, never the user's."""
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def run_api(tmp_path):
    """Run one experiment in-process; returns (report, run_dir)."""
    import prune_cli

    def _run(*overrides, name="run", tiny=True):
        run_dir = tmp_path / name
        report = prune_cli.run(([*TINY] if tiny else []) + list(overrides), run_dir)
        return report, run_dir
    return _run


def prune_run(args, cwd, env=None, timeout=300):
    """``prune-run`` in a subprocess, as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run([sys.executable, "-m", "prune_cli.app.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_report(run_dir) -> dict:
    return json.loads((Path(run_dir) / "report.json").read_text())
