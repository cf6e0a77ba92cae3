"""Reliability: resume after kill -9, atomic writes, Ctrl-C, non-finite losses, safe loading."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import prune_cli
from prune_cli.storage.atomic import atomic_torch_save, atomic_write_text
from prune_cli.storage.safe_load import safe_load
from prune_cli.errors import UsageError

from conftest import CLI_WITH_STOP_SIGNALS, prune_run, read_report, run_in_process

SLOW_FINETUNE = ["device=cpu", "model=lenet300", "train.epochs=2", "finetune.epochs=8", "finetune.batch_size=16",
                 "checkpoint.every_s=0", "sparsity=0.9", "measure.latency_budget_s=0.01"]


def start(args, cwd, env):
    return subprocess.Popen([*CLI_WITH_STOP_SIGNALS, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_finetune_epoch(run_dir: Path, proc, at_least: int = 2, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        state = run_dir / "state.pt"
        if state.exists():
            try:
                position = safe_load(state).get("position")
            except UsageError:
                position = None  # replaced while we read it
            if position and position["stage"] == "round1.finetune" and position["epoch"] >= at_least:
                return position["epoch"]
        time.sleep(0.05)
    raise AssertionError("the run never reached fine-tuning")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run, never stopped."""
    cwd = tmp_path_factory.mktemp("reference")
    reference = prune_run([*SLOW_FINETUNE, f"hydra.run.dir={cwd / 'run'}"], cwd=cwd, env=dict(os.environ))
    assert reference.returncode == 0, reference.stderr
    return cwd / "run"


@pytest.mark.xdist_group("uninterrupted")  # one worker: the module's reference run is made once
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, stop, uninterrupted):
    env = dict(os.environ)
    reference_dir, killed_dir = uninterrupted, tmp_path / "killed"

    proc = start([*SLOW_FINETUNE, f"hydra.run.dir={killed_dir}"], tmp_path, env)
    epoch = wait_for_finetune_epoch(killed_dir, proc)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=60)
    if stop == signal.SIGKILL:
        assert not (killed_dir / "report.json").exists()
    else:  # a scheduler's preemption: recorded like Ctrl-C, with the signal's exit code
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
        assert "prune-run: interrupted by SIGTERM; state kept in" in stderr
        report = read_report(killed_dir)
        assert report["status"] == "interrupted" and "by SIGTERM" in report["error"]

    resumed = prune_run([*SLOW_FINETUNE, f"hydra.run.dir={killed_dir}"], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_report(reference_dir), read_report(killed_dir)
    assert b["resumed_from"]["stage"] == "round1.finetune" and b["resumed_from"]["epoch"] >= epoch
    assert "resumed_from" not in a
    for key in ("accuracy", "sparsity", "layers", "params"):
        assert a[key] == b[key], key
    sa, sb = safe_load(reference_dir / "pruned.pt")["state_dict"], safe_load(killed_dir / "pruned.pt")["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not (killed_dir / "state.pt").exists()


# SIGTERM's exit code and report are checked with its resume, above.
@pytest.mark.parametrize("stop,named", [(signal.SIGINT, "by the user (Ctrl-C)"), (signal.SIGUSR1, "by SIGUSR1"),
                                        (signal.SIGHUP, "by SIGHUP")],
                         ids=["SIGINT", "SIGUSR1", "SIGHUP"])
def test_a_stop_signal_records_interrupted_and_exits_128_plus_it(tmp_path, stop, named):
    run_dir = tmp_path / "run"
    proc = start([*SLOW_FINETUNE, f"hydra.run.dir={run_dir}"], tmp_path, dict(os.environ))
    wait_for_finetune_epoch(run_dir, proc, at_least=1)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + stop
    assert "Traceback" not in stderr and f"prune-run: interrupted {named}; state kept in" in stderr
    report = read_report(run_dir)
    assert report["status"] == "interrupted" and "resume" in report["error"] and named in report["error"]
    assert (run_dir / "state.pt").exists() and not (run_dir / "pruned.pt").exists()


def test_non_finite_loss_fails_the_run_with_stage_and_step(tmp_path):
    run_dir = tmp_path / "run"
    result = prune_run(["train.epochs=2", "finetune.epochs=1", "train.lr=1e12", "train.optimizer=sgd",
                        f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    report = read_report(run_dir)
    assert report["status"] == "failed"
    assert "non-finite loss in stage 'train'" in report["error"] and "step" in report["error"]
    assert report["error"] in result.stderr
    assert not (run_dir / "pruned.pt").exists()


def test_a_learning_rate_that_overflows_float32_fails_the_run_with_one_line(tmp_path, capsys, monkeypatch):
    # Adam's first step divides the lr by its bias correction (0.1): 3.4e38 / 0.1 is beyond float32
    run_dir = tmp_path / "run"
    code, _, err = run_in_process(["train.lr=3.4e38", "train.epochs=1", "finetune.epochs=0",
                                   f"hydra.run.dir={run_dir}"], capsys, monkeypatch, tmp_path)
    message = ("non-finite update in stage 'train' at epoch 1, step 1: lr 3.4e+38 overflows float32 "
               "(try a smaller lr)")
    assert code == 1
    assert err.strip().splitlines() == [f"prune-run: run failed: {message}"]
    assert read_report(run_dir)["status"] == "failed" and read_report(run_dir)["error"] == message
    code, _, err = run_in_process(["train.lr=1e308", f"hydra.run.dir={tmp_path / 'other'}"], capsys, monkeypatch,
                                  tmp_path)
    assert code == 2
    assert err.strip().splitlines() == ["prune-run: train.lr=1e+308: must be a positive number (at most "
                                        "3.40282e+38)"]


def test_save_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "pruned.pt"
    atomic_torch_save({"v": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"v": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]


def test_text_write_that_fails_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    atomic_write_text(path, '{"status": "completed"}')
    import prune_cli.storage.atomic as atomic

    def exploding_replace(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic.os, "replace", exploding_replace)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"status": "failed"}')
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_objects_in_a_checkpoint_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "model": Evil()}, path)
    with pytest.raises(UsageError, match="refused"):
        prune_cli.load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_truncated_or_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "pruned.pt"
    if content is None:
        torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(UsageError, match="corrupt or truncated"):
        prune_cli.load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        prune_cli.load_checkpoint(tmp_path / "nope.pt")


def test_runs_are_deterministic_on_cpu(run_api):
    a, dir_a = run_api("schedule=iterative", "schedule.rounds=2", "strategy=gradient", name="a")
    b, dir_b = run_api("schedule=iterative", "schedule.rounds=2", "strategy=gradient", name="b")
    for key in ("accuracy", "sparsity", "layers", "rounds", "params"):
        if key == "rounds":
            strip = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]
            assert strip(a[key]) == strip(b[key])
        else:
            assert a[key] == b[key]
    sa, sb = safe_load(dir_a / "pruned.pt")["state_dict"], safe_load(dir_b / "pruned.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("loop", [["schedule=iterative", "schedule.rounds=2"], ["schedule=gradual"],
                                  ["strategy=compress"], ["strategy=activation", "sparsity=0.5"]],
                         ids=["rounds", "gradual", "smaller_model", "structured"])
def test_a_run_stopped_after_its_last_stage_finishes_with_the_same_weights(tmp_path, run_api, loop):
    """Killed after the loop's last boundary, before pruned.pt was written: the re-run only finishes, with
    the weights the loop left (not a fresh model), so the checkpoint equals an uninterrupted run's."""
    from omegaconf import OmegaConf
    from conftest import TINY
    from prune_cli.config import compose_config
    from prune_cli.pipeline import dense
    from prune_cli.pipeline.experiment import Experiment
    cfg = compose_config([*TINY, "measure.latency=false", *loop])
    OmegaConf.resolve(cfg)
    stopped = Experiment(cfg, tmp_path / "stopped")
    dense.train_dense(stopped)
    stopped.loop.run(stopped)          # every stage done and saved; finish never ran
    assert (tmp_path / "stopped" / "state.pt").exists() and not (tmp_path / "stopped" / "pruned.pt").exists()
    resumed = Experiment(cfg, tmp_path / "stopped").run()
    whole, whole_dir = run_api("measure.latency=false", *loop, name="whole")
    a, b = safe_load(tmp_path / "stopped" / "pruned.pt"), safe_load(whole_dir / "pruned.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for key in ("sparsity", "accuracy", "layers", "rounds"):
        assert resumed[key] == whole[key] if key != "rounds" else \
            [dict(r, seconds=0) for r in resumed[key]] == [dict(r, seconds=0) for r in whole[key]]
    assert resumed["resumed_from"]["epoch"] is None and not (tmp_path / "stopped" / "state.pt").exists()


def test_files_a_killed_process_left_are_removed_when_the_run_resumes_or_finishes(tmp_path, run_api):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    leftovers = [run_dir / ".state.pt.deadbeef.tmp", run_dir / ".report.json.0123abcd.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    report, _ = run_api("sparsity=0.5", name="run")
    assert report["status"] == "completed"
    assert not any(p.exists() for p in leftovers)
    assert not any(p.name.endswith(".tmp") and p.name.startswith(".") for p in run_dir.iterdir())


def test_a_state_left_beside_a_completed_report_is_removed_on_the_next_command(tmp_path, run_api):
    from conftest import TINY
    run_dir = tmp_path / "run"
    run_api(name="run")
    (run_dir / "state.pt").write_bytes(b"as if the kill landed after the report")
    again = prune_run([*TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "removed what a killed process left: state.pt" in again.stderr
    assert not (run_dir / "state.pt").exists() and read_report(run_dir)["status"] == "completed"
