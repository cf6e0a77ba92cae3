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

from conftest import CLI_WITH_STOP_SIGNALS, TINY, prune_run, read_report, run_in_process

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
    assert err.strip().splitlines() == ["prune-run: hydra.run.dir=.: is the launch directory; a run "
                                        "needs a directory of its own (e.g. hydra.run.dir=outputs/runs/NAME)"]
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


# --- sizes no machine has: refused from the config, before anything is allocated ------------------------------

def test_a_synthetic_set_larger_than_memory_is_refused_before_it_is_built(monkeypatch):
    from omegaconf import OmegaConf
    from prune_cli.errors import UsageError
    from prune_cli.pipeline import memory
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2 ** 30)
    cfg = OmegaConf.create({"name": "synthetic", "shape": [3, 64, 64], "train_size": 10_000, "test_size": 240})
    # 3 copies x 10,240 images x 12,288 values x 4 bytes = 1.41 GiB, more than the 1 GiB available
    with pytest.raises(UsageError) as refused:
        memory.check_data_fits(cfg)
    assert str(refused.value) == ("dataset.train_size=10000, dataset.test_size=240, dataset.shape=[3, 64, 64]: "
                                  "the set needs about 1.4 GiB of memory, more than the 1.0 GiB this machine has "
                                  "available; make it smaller")
    memory.check_data_fits(OmegaConf.create({**cfg, "train_size": 5_000}))  # 0.70 GiB fits


def test_a_model_larger_than_memory_is_refused_without_allocating_it(monkeypatch):
    from prune_cli.data.splits import DataInfo
    from prune_cli.errors import UsageError
    from prune_cli.pipeline import memory
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2 ** 30)
    info = DataInfo("digits", (1, 8, 8), 10, (0.5,), (0.25,))
    model = {"_target_": "prune_cli.models.MLP", "name": "mlp", "hidden": [10_000, 10_000]}
    # 64*10,000 + 10,000 + 10,000*10,000 + 10,000 + 10,000*10 + 10 weights and biases, 2 normalisation buffers
    params = 64 * 10_000 + 10_000 + 10_000 ** 2 + 10_000 + 10_000 * 10 + 10 + 2
    with pytest.raises(UsageError) as refused:
        memory.check_model_fits(model, info, torch_device("cpu"))
    assert str(refused.value) == (f"model=mlp: {params:,} parameters need about 1.9 GiB to train, more than "
                                  f"the 1.0 GiB this machine has available; choose a smaller model or inputs")
    assert memory.check_model_fits({**model, "hidden": [256]}, info, torch_device("cpu")) == 64 * 256 + 256 + 2570 + 2


def torch_device(name):
    import torch
    return torch.device(name)


@pytest.mark.parametrize("overrides, starts", [
    (["dataset=synthetic", "dataset.shape=[3,4096,4096]", "dataset.train_size=10000000"],
     "prune-run: dataset.train_size=10000000, dataset.test_size=200, dataset.shape=[3, 4096, 4096]: the set "
     "needs about 5,625,112.5 GiB of memory"),
    (["model.hidden=[1000000,1000000]"], "prune-run: model=mlp: 1,000,076,000,012 parameters need about "
                                         "18,627.9 GiB to train"),
], ids=["synthetic-set", "mlp"])
def test_sizes_no_machine_has_are_one_line_in_seconds_and_leave_no_directory(tmp_path, overrides, starts):
    started = time.monotonic()
    result = prune_run([*overrides, "device=cpu", "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 2 and time.monotonic() - started < 15, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), result.stderr
    assert not (tmp_path / "run").exists()


# --- files we read are data of the right types -----------------------------------------------------------------

def test_weights_that_are_not_a_torch_file_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "w.txt").write_text("hello\n")
    code, _, err = run_in_process([*TINY, "weights=w.txt", "hydra.run.dir=run"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == ["prune-run: weights=w.txt: not a file torch.save wrote (KeyError: 101)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, problem", [
    ("done", "dense", "'done' is not a list of stage names"),
    ("position", {"stage": "train", "epoch": "3"}, "'position' is not a stage, an epoch and an optimizer state"),
    ("position", {"stage": "train", "epoch": 3, "optimizer": None, "scaler": {"scale": 1.0}},
     "'position.scaler' is not a gradient scaler's state"),
    ("model", {"fc.weight": [1.0, 2.0]}, "'model' is not a mapping of names to tensors"),
    ("kept", {"initial": "weights"}, "'kept' is not a mapping of names to weights"),
    ("rng", {"cpu": 7}, "'rng' is not a generator state"),
])
def test_a_resume_state_with_the_right_fingerprint_and_wrong_types_is_one_line(tmp_path, capsys, monkeypatch,
                                                                               field, value, problem):
    import torch
    from prune_cli.config import compose_config, fingerprint
    overrides = [*TINY, "hydra.run.dir=run"]
    cfg = compose_config(overrides[:-1])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = {"fingerprint": fingerprint(cfg), "done": [], "position": None, "model": None, "masks": None,
             "record": {}, "kept": None, "rng": None, field: value}
    torch.save(state, run_dir / "state.pt")
    before = snapshot(run_dir)
    code, _, err = run_in_process(overrides, capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"prune-run: {run_dir / 'state.pt'}: not a resume state prune-run wrote "
                                        f"({problem}); remove it to start this run over"]
    assert snapshot(run_dir) == before


# --- the log file: never through a link, a full disk said once -------------------------------------------------

def test_the_log_file_reports_a_failing_disk_once_and_goes_on(capsys):
    import logging
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to stand for a full disk")
    from prune_cli.app.log_file import LogFile
    handler = LogFile("/dev/full")
    logger = logging.getLogger("prune_cli.test.full_disk")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(50):
            logger.warning("record %d", i)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert capsys.readouterr().err.splitlines() == [
        "prune-run: cannot write the log /dev/full (No space left on device); the run goes on without it"]


def test_the_log_file_is_never_opened_through_a_link(tmp_path):
    from prune_cli.app.log_file import LogFile
    target = tmp_path / "precious"
    target.write_text("keep\n")
    (tmp_path / "prune-run.log").symlink_to(target)
    with pytest.raises(OSError):
        LogFile(str(tmp_path / "prune-run.log"))
    assert target.read_text() == "keep\n"


def test_hydra_writes_the_run_log_with_that_handler(tmp_path):
    from hydra import compose, initialize_config_dir
    from prune_cli.config import CONFIG_DIR
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.job_logging.handlers.file["class"] == "prune_cli.app.log_file.LogFile"


# --- more refusals that must come first ------------------------------------------------------------------------

def test_a_run_directory_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys, monkeypatch):
    long = tmp_path / ("a" * 300)
    code, _, err = run_in_process([*TINY, f"hydra.run.dir={long}"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"prune-run: hydra.run.dir={long}: cannot be used: File name too long; "
                                        f"choose another directory"]


def test_a_bad_value_is_refused_even_where_the_run_is_already_complete(tmp_path, capsys, monkeypatch):
    code, _, _ = run_in_process([*TINY, "hydra.run.dir=run"], capsys, monkeypatch, tmp_path)
    assert code == 0
    before = snapshot(tmp_path / "run")
    # progress cannot change a result, so the completed run is this config's; its value is still checked
    code, _, err = run_in_process([*TINY, "hydra.run.dir=run", "progress=maybe"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == ["prune-run: progress='maybe': must be auto or true or false"]
    assert snapshot(tmp_path / "run") == before


def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*CLI_WITH_STOP_SIGNALS, *TINY, "hydra.run.dir=run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # checking the config and importing torch: no run has started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130 either way for a shell: exit(130), or (rarely, on a loaded machine) the interpreter's own end by
    # SIGINT after the line was printed
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("prune-run: interrupted by the user (Ctrl-C)")


def test_a_sweep_directory_holding_the_users_files_is_refused_before_hydra_writes(tmp_path):
    sweep = tmp_path / "mine"
    sweep.mkdir()
    (sweep / "notes.txt").write_text("keep\n")
    (sweep / "multirun.yaml").symlink_to(tmp_path / "notes-elsewhere")
    result = prune_run(["-m", "sparsity=0.5,0.9", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"prune-run: hydra.sweep.dir={sweep}: {sweep / 'multirun.yaml'} is a symbolic link where prune-run "
        f"writes; prune-run never writes through links: remove it or choose another directory"]
    (sweep / "multirun.yaml").unlink()
    result = prune_run(["-m", "sparsity=0.5,0.9", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"prune-run: hydra.sweep.dir={sweep}: holds files prune-run did not write (notes.txt); choose an empty or "
        f"new directory (nothing was changed)"]
    assert sorted(p.name for p in sweep.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "notes-elsewhere").exists()
