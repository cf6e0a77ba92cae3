"""A run directory cannot be turned against its user: it is decided once (as the OS resolves it), the launch
directory and directories holding the user's files are refused, no write follows a planted link, a second
command on a directory in use is refused, and contradictions are refused before any work or directory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY, prune_run, read_report, run_in_process

WRITTEN = ["metrics.csv", "prune-run.log", ".hydra", "report.json", "report.md", "pruned.pt", "state.pt",
           "history.png"]


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("spelling", [".", ""])
def test_the_launch_directory_is_refused_and_the_users_files_stay(tmp_path, capsys, monkeypatch, spelling):
    for name in ("report.md", "metrics.csv", "history.png"):
        (tmp_path / name).write_text(f"the user's own {name}\n")
    before = snapshot(tmp_path)
    code, _, err = run_in_process([*TINY, f"hydra.run.dir={spelling}"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"prune-run: hydra.run.dir=.: is the launch directory; a run "
                                        f"needs a directory of its own (e.g. hydra.run.dir=outputs/runs/NAME)"]
    assert snapshot(tmp_path) == before


def test_a_directory_with_the_users_files_is_refused(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "report.json").write_text('{"accuracy": 0.99}\n')  # no status: not a prune-run report
    (run_dir / "pruned.pt").write_bytes(b"the user's checkpoint")
    before = snapshot(run_dir)
    code, _, err = run_in_process([*TINY, f"hydra.run.dir={run_dir}"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"prune-run: hydra.run.dir={run_dir}: holds files prune-run did not write "
                                        f"(pruned.pt, report.json); choose an empty or new directory (nothing was "
                                        f"changed)"]
    assert snapshot(run_dir) == before
    (run_dir / "notes.txt").write_text("x")
    code, _, err = run_in_process([*TINY, f"hydra.run.dir={run_dir}"], capsys, monkeypatch, tmp_path)
    assert code == 2 and "holds files prune-run did not write (notes.txt)" in err
    (run_dir / "report.json").unlink()  # not a prune-run report: out of the session's schema check


@pytest.mark.parametrize("name", WRITTEN)
def test_a_link_planted_where_a_run_writes_is_refused_and_its_target_stays(tmp_path, capsys, monkeypatch, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious"
    if name == ".hydra":
        target.mkdir()
        (target / "config.yaml").write_text("mine: true\n")
    else:
        target.write_bytes(b"precious bytes\n")
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    (run_dir / name).symlink_to(target)
    before = snapshot(outside)
    code, _, err = run_in_process([*TINY, f"hydra.run.dir={run_dir}"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"prune-run: hydra.run.dir={run_dir}: {run_dir / name} is a symbolic link "
                                        f"where prune-run writes; prune-run never writes through links: remove it "
                                        f"or choose another directory"]
    assert snapshot(outside) == before
    assert sorted(os.listdir(run_dir)) == [name]


def test_dot_dot_is_resolved_once_for_the_check_and_the_writes(tmp_path):
    done = tmp_path / "DONE"
    first = prune_run([*TINY, "sparsity=0.9", f"hydra.run.dir={done}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = snapshot(done)
    again = prune_run([*TINY, "sparsity=0.5", "hydra.run.dir=x/../DONE"], cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == ["prune-run: hydra.run.dir=x/../DONE: holds a completed run with a "
                                                 "different config; choose another directory (nothing was changed)"]
    assert snapshot(done) == before and not (tmp_path / "x").exists()
    # The same through a sweep: the refused job is named and the sweep exits 1; the run's files stay. (Hydra
    # writes a job's .hydra/ before any hook of ours runs, so in a sweep those three files are Hydra's to write.)
    swept = prune_run(["-m", *TINY, "sparsity=0.5", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=../DONE"],
                      cwd=tmp_path)
    assert swept.returncode == 1, swept.stderr
    assert "refused: hydra.run.dir=" in swept.stderr and "holds a completed run with a different config" in swept.stderr
    after = snapshot(done)
    assert {k: v for k, v in after.items() if not k.startswith(".hydra/")} == \
        {k: v for k, v in before.items() if not k.startswith(".hydra/")}


def test_a_second_command_on_a_directory_in_use_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, "-m", "prune_cli.app.cli", "train.epochs=100000", "progress=false",
                              f"hydra.run.dir={run_dir}", "cache.enabled=false"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        holder = run_dir / ".prune-run.pid"
        deadline = time.monotonic() + 120
        while not holder.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holder.read_text().strip() == str(first.pid)
        for other in (["sparsity=0.5"], ["train.epochs=100000", "cache.enabled=false"]):  # another config, the same
            second = prune_run([*other, "progress=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
            assert second.returncode == 2
            lines = second.stderr.strip().splitlines()
            assert lines[-1] in (f"prune-run: hydra.run.dir={run_dir}: another prune-run (PID {first.pid}) is using "
                                 f"this directory; wait for it to end or choose another directory",
                                 f"prune-run: hydra.run.dir={run_dir}: holds an unfinished run with a different "
                                 f"config; choose another directory (nothing was changed)"), lines
            assert len(lines) == 1
        assert first.poll() is None  # the first run was left alone
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


@pytest.mark.parametrize("overrides, message", [
    (["schedule=gradual", "schedule.initial_sparsity=0.95", "sparsity=0.5"],
     "prune-run: schedule.initial_sparsity=0.95: above the target sparsity=0.5; the ramp rises from the initial "
     "sparsity to the target, so it must be at most the target"),
    (["strategy=compress", "sparsity=0.9999", "train.epochs=20"], "prune-run: sparsity=0.9999: strategy=compress "
                                                                  "cannot reach it"),
], ids=["gradual-initial-above-target", "compress-unreachable"])
def test_contradictions_are_refused_before_any_work_and_leave_no_directory(tmp_path, capsys, monkeypatch,
                                                                           overrides, message):
    started = time.monotonic()
    code, _, err = run_in_process([*overrides, "hydra.run.dir=run"], capsys, monkeypatch, tmp_path)
    assert code == 2 and time.monotonic() - started < 5
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith(message), err
    assert not (tmp_path / "run").exists()


def _image(path, value):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=value).save(path)


def test_an_image_folder_link_loop_is_not_walked(tmp_path):
    from omegaconf import OmegaConf
    from prune_cli.data import load_dataset
    root = tmp_path / "images"
    for split in ("train", "test"):
        for label, value in (("a", 10), ("b", 200)):
            for i in range(4):
                _image(root / split / label / f"{i}.png", value + i)
    (root / "train" / "a" / "loop").symlink_to(root / "train" / "a")          # a cycle
    (root / "train" / "b" / "out").symlink_to(tmp_path, target_is_directory=True)  # out of the root
    data = load_dataset(OmegaConf.create({"name": "imagefolder", "root": str(root), "val_fraction": 0.0,
                                          "split_seed": 0, "augment": None, "in_memory": True, "memory_mb": 1000,
                                          "workers": 0, "channels": None, "image_size": None}))
    assert len(data.train) == 8 and len(data.test) == 8


def test_a_one_class_image_folder_is_refused(tmp_path, capsys, monkeypatch):
    root = tmp_path / "images"
    for split in ("train", "test"):
        _image(root / split / "only" / "0.png", 5)
    code, _, err = run_in_process([*TINY, "dataset=imagefolder", f"dataset.root={root}", "hydra.run.dir=run"],
                                  capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"prune-run: dataset.root={root}: train/ has 1 class folder ('only'); "
                                        f"classifying needs at least 2"]


def test_a_completed_run_is_reused_and_its_lock_released(tmp_path, capsys, monkeypatch):
    code, _, _ = run_in_process([*TINY, "hydra.run.dir=run"], capsys, monkeypatch, tmp_path)
    assert code == 0 and read_report(tmp_path / "run")["status"] == "completed"
    from prune_cli.storage.run_dir import lock
    lock(tmp_path / "run").release()  # free again once the command ended


def test_prune_compare_skips_a_fifo_and_a_link_to_dev_zero_with_one_line_each(tmp_path, caplog):
    """A report.json that is a FIFO would block a reader forever, one linked to /dev/zero never ends: both
    are skipped with a warning, and the comparison still says there is nothing to compare."""
    import logging
    from prune_cli.comparison.collect import collect_reports
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "report.json")
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "report.json").symlink_to("/dev/zero")
    (tmp_path / "typed").mkdir()
    (tmp_path / "typed" / "report.json").write_text('{"status": "completed", "experiment": [1], "sparsity": 3}')
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert collect_reports([tmp_path], include_failed=True) == []
    assert time.monotonic() - started < 5
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert len(warnings) == 3
    assert any("fifo/report.json: not a regular file" in w for w in warnings)
    assert any("/dev/zero: not a regular file" in w or "zero/report.json: not a regular file" in w for w in warnings)
    assert any("'experiment' is not a mapping of plain values" in w for w in warnings)
