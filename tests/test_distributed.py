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
    ["strategy=sparsegpt", "sparsity=0.8"],    # rank 0 alone calibrates and changes the weights it keeps
], ids=["unstructured", "structured", "lottery", "reconstructing"])
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


def test_a_run_failing_on_every_rank_is_reported_by_rank_0(tmp_path):
    """A non-finite loss reaches every rank (the gradients are averaged): rank 0 reports it, once, as the
    failure it is; the other rank waits for that instead of racing it to the exit (torchrun stops the rest
    as soon as one process exits)."""
    code, out = finished(torchrun([*SMALL, "train.optimizer=sgd", "train.lr=1e30",
                                   f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert code == 1
    ours = [line for line in out.splitlines() if line.startswith("prune-run")]
    assert ours == ["prune-run: run failed: non-finite loss in stage 'train' at epoch 1, step 2 (try a smaller lr)"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "failed" and report["error"].startswith("non-finite loss in stage 'train'")
    root = out[out.index("Root Cause"):]
    assert "rank      : 0 (local_rank: 0)" in root and "exitcode  : 1 " in root


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


def _on_main_in(rank: int, port: int) -> None:
    """One of two gloo processes: rank 0 fails where it works alone, then succeeds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import prune_cli.distributed as distributed
    from prune_cli.errors import UsageError

    def refuse():
        raise UsageError("hydra.run.dir=x: in use by another run")
    distributed.start()
    try:
        distributed.on_main(refuse)
    except UsageError as err:
        assert rank == 0 and str(err) == "hydra.run.dir=x: in use by another run"
    except distributed.MainFailed as err:
        assert rank == 1 and err.code == 2
        assert str(err) == "rank 0 failed: UsageError: hydra.run.dir=x: in use by another run"
    else:
        raise AssertionError("on_main's failure did not reach this rank")
    assert distributed.on_main(lambda: "report") == ("report" if rank == 0 else None)
    distributed.stop()


def test_rank_0_working_alone_tells_the_others_its_outcome():
    """Where rank 0 works alone (the run directory, the dense cache's lock, the final report), a failure there
    reaches every rank with rank 0's exit code: none waits for a collective that never comes."""
    import socket

    import torch.multiprocessing
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = torch.multiprocessing.spawn(_on_main_in, args=(port,), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not processes.join(timeout=1):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            raise AssertionError("a rank is still waiting")


def test_what_a_run_across_processes_cannot_do_is_refused_before_hydra_writes(tmp_path, monkeypatch, capsys):
    """The guard (rank 0, before Hydra makes the run directory) refuses a global batch too small to share."""
    import prune_cli.distributed as distributed
    from prune_cli.app.guard import guard
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "active", lambda: True)  # the process group as torchrun's rank 0 has it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        guard([*SMALL, "train.batch_size=3", f"hydra.run.dir={tmp_path / 'run'}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("prune-run: train.batch_size=3: across 2 processes the global batch needs "
                                       "at least 4 examples (two per process)\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device, env, gpus, refusal", [
    ("cuda:1", {"LOCAL_WORLD_SIZE": "2"}, 2, "device=cuda:1: across 2 processes each takes its own GPU; use "
                                             "device=cuda (or auto)"),
    ("cuda", {"LOCAL_WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "r"}, 2,
     "device=cuda: 4 processes on this node and 2 GPU(s); each process takes its own: start at most 2 per node "
     "(torchrun --nproc_per_node=2)"),
    ("cuda", {"LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "r"}, 1,
     "device=cuda: 2 processes on this node and 1 GPU(s); each process takes its own: start at most 1 per node "
     "(torchrun --nproc_per_node=1)"),
    ("cuda", {"LOCAL_WORLD_SIZE": "2"}, 1, None),   # a SLURM task that sees one GPU was given its own
    ("cuda", {"LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "r"}, 2, None),
])
def test_each_process_takes_its_own_gpu(monkeypatch, device, env, gpus, refusal):
    import torch
    from omegaconf import OmegaConf

    import prune_cli.distributed as distributed
    from prune_cli.errors import UsageError
    for key in ("LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"WORLD_SIZE": "2", "LOCAL_RANK": "0", **env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(distributed, "active", lambda: True)
    cfg = OmegaConf.create({"train": {"batch_size": 128}, "finetune": {"batch_size": 128}})
    if refusal is None:
        distributed.check(cfg, torch.device(device))
    else:
        with pytest.raises(UsageError) as err:
            distributed.check(cfg, torch.device(device))
        assert str(err.value) == refusal

