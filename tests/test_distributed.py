"""One experiment across processes: torchrun with 2 CPU processes (gloo), against the same run in one process.

Kept few and small: each torchrun start costs two interpreters loading torch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prune_cli
from prune_cli.storage.safe_load import safe_load

from conftest import check_sparsity  # noqa: E402

SMALL = ["device=cpu", "model=lenet300", "train.epochs=2", "finetune.epochs=1", "measure.latency=false",
         "progress=false"]


def torchrun(args, tmp_path, **kwargs):
    """``torchrun --standalone --nproc_per_node=2 -m prune_cli.app.cli ARGS`` in ``tmp_path``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "prune_cli.app.cli", *args]
    env = dict(os.environ, PRUNE_CLI_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def finished(process, timeout=240):
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


@pytest.mark.parametrize("overrides", [
    ["sparsity=0.8"],
    ["strategy=activation", "sparsity=0.5"],                        # structured: the shrunk model fine-tuned
    ["schedule=lottery", "schedule.rounds=2", "sparsity=0.8"],      # rewinding, two prunes
], ids=["unstructured", "structured", "lottery"])
def test_two_processes_run_one_experiment_like_one_process(tmp_path, overrides):
    code, out = finished(torchrun([*SMALL, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert code == 0, out
    # One run directory, one report, one checkpoint; nothing else beside the cache.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]
    assert len(list((tmp_path / "cache").glob("dense-*.pt"))) == 1
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    prunes = 2 if "schedule=lottery" in overrides else 1
    assert report["status"] == "completed"
    assert report["distributed"] == {"world_size": 2, "backend": "gloo", "masks_checked": prunes, "masks_differed": 0}
    assert out.count("report written to") == 1 and out.count("accuracy fine-tuned") == 1  # rank 0 speaks
    check_sparsity(report, tmp_path / "run", [*SMALL, *overrides])
    masks = safe_load(tmp_path / "run" / "pruned.pt")["masks"]
    state = safe_load(tmp_path / "run" / "pruned.pt")["state_dict"]
    assert all(int((state[n][masks[n] == 0] != 0).sum()) == 0 for n in masks)  # pruned weights stay zero
    if "strategy=activation" in overrides:
        assert report["shrunk"]["matches_masked"] and report["finetuned_on"][0]["on"] == "shrunk"
    # The same config and seed in one process: the shards together are its batches, the loss weighted so the
    # averaged gradient is the whole batch's; only the summation order differs.
    single = prune_cli.run([*SMALL, *overrides], tmp_path / "single")
    for moment in ("dense", "pruned", "finetuned"):
        assert abs(report["accuracy"][moment] - single["accuracy"][moment]) <= 0.01, moment
    assert single["distributed"] is None


def test_sigterm_to_torchrun_leaves_an_interrupted_run_that_the_same_command_resumes(tmp_path):
    args = [*SMALL, "finetune.epochs=30", "sparsity=0.8", "checkpoint.every_s=0", f"hydra.run.dir={tmp_path / 'run'}"]
    process = torchrun(args, tmp_path, start_new_session=True)
    log = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        rows = log.read_text().count("round1.finetune") if log.exists() else 0
        if rows >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, finished(process)[1]
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    code, out = finished(process)
    assert code != 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "interrupted", out
    assert "prune-run: interrupted" in out and (tmp_path / "run" / "state.pt").exists()
    epochs_done = safe_load(tmp_path / "run" / "state.pt")["position"]["epoch"]
    code, out = finished(torchrun(args, tmp_path))
    assert code == 0, out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "completed" and report["resumed_from"] == {"stage": "round1.finetune",
                                                                          "epoch": epochs_done}
    assert report["distributed"]["world_size"] == 2


def test_a_bad_value_under_torchrun_is_one_line_and_writes_nothing(tmp_path):
    code, out = finished(torchrun([*SMALL, "sparsity=1.5", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    ours = [line for line in out.splitlines() if line.startswith("prune-run")]
    assert ours == ["prune-run: sparsity=1.5: must be a number in [0, 1) (the fraction of prunable weights that "
                    "are zero at the end)"]
    # torchrun reports a worker's non-zero exit its own way (exit 1 and its summary): the workers' code is 2.
    assert code == 1 and "exitcode  : 2" in out
    assert not (tmp_path / "run").exists() and not Path(tmp_path / "outputs").exists()


def test_a_submitit_job_of_two_tasks_is_one_experiment_across_them(tmp_path):
    """hydra/launcher=submitit_local with tasks_per_node=2: the SLURM launcher's machinery on this machine."""
    env = dict(os.environ, PRUNE_CLI_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "prune_cli.app.cli", "-m", "hydra/launcher=submitit_local",
                           "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", *SMALL,
                           "sparsity=0.8"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (report_path,) = (tmp_path / "sweep").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["status"] == "completed"
    assert report["distributed"] == {"world_size": 2, "backend": "gloo", "masks_checked": 1, "masks_differed": 0}
    check_sparsity(report, report_path.parent, [*SMALL, "sparsity=0.8"])
