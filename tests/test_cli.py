"""prune-run as a user runs it: a subprocess, its exit code, what it prints, what it leaves behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, options, prune_run, read_report, run_in_process


def test_run_writes_report_and_checkpoint_under_outputs_by_default(tmp_path):
    result = prune_run(["strategy=magnitude", "sparsity=0.9", *TINY], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("_magnitude_0.9")
    run_dir = runs[0]
    assert {"report.json", "report.md", "pruned.pt", "prune-run.log"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / ".hydra" / "config.yaml").exists()
    report = read_report(run_dir)
    assert report["status"] == "completed" and report["sparsity"]["target"] == 0.9
    assert "accuracy fine-tuned" in result.stdout  # the rich summary table


BAD_INPUTS = [
    (["sparsity=1.0"], "sparsity=1.0: must be a number in [0, 1)"),
    (["sparsity=-0.2"], "sparsity=-0.2: must be a number in [0, 1)"),
    (["sparsity=abc"], "sparsity='abc': must be a number"),
    (["train.epochs=0"], "train.epochs=0: must be a positive integer"),
    (["finetune.epochs=-1"], "finetune.epochs=-1: must be a non-negative integer"),
    (["train.lr=0"], "train.lr=0: must be a positive number"),
    (["finetune.lr=-1e-3"], "finetune.lr=-0.001: must be a positive number"),
    (["train.batch_size=0"], "train.batch_size=0: must be a positive integer"),
    (["train.optimizer=rmsprop"], "train.optimizer='rmsprop': must be one of adam, adamw, sgd"),
    (["device=tpu"], "device='tpu': must be one of auto, cpu, cuda"),
    (["schedule=iterative", "schedule.rounds=0"], "schedule.rounds=0: must be a positive integer"),
    (["schedule=iterative", "schedule.rounds=4", "finetune.epochs=2"], "schedule.rounds=4: needs finetune.epochs"),
    (["strategy.scope=everywhere"], "strategy.scope='everywhere': must be one of global, layer"),
    (["model=lenet5", "dataset=synthetic", "dataset.shape=[1,2,2]"], "model=lenet5 cannot take dataset=synthetic"),
    (["strategy=activation", "sparsity=0.9999"], "sparsity=0.9999: strategy=activation removes whole units and "
                                                 "can reach at most 0.9961"),
    (["strategy=gradient", "strategy.batches=abc"], "strategy.batches='abc': must be a positive integer"),
    (["schedule=iterative", "schedule.rounds=2.5"], "schedule.rounds=2.5: must be a positive integer"),
    (["schedule=lottery", "schedule.rewind_epoch=10", "train.epochs=2"],
     "schedule.rewind_epoch=10: must be at most train.epochs (2)"),
    (["dataset.val_fraction=1.5"], "dataset.val_fraction=1.5: must be a number in [0, 1)"),
    (["strategy=compress", "sparsity=0.998", "train.epochs=1"],
     "sparsity=0.998: strategy=compress cannot reach it: the narrowest model removes at most 0.9961"),
    (["threads=0"], "threads=0: must be auto or a positive integer"),
    (["gpu_memory_fraction=0"], "gpu_memory_fraction=0: must be auto or a positive number (at most 1)"),
    (["model.hidden=abc"], "model.hidden='abc': must be a list of items, each a positive integer"),
    (["sparsity=0.99999999"], "sparsity=0.99999999: would prune all 18,944 prunable weights of model=mlp"),
    (["schedule=gradual", "finetune.epochs=0"], "finetune.epochs=0: schedule=gradual prunes during fine-tuning"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, monkeypatch, overrides, message):
    run_dir = tmp_path / "run"
    code, out, err = run_in_process([*overrides, f"hydra.run.dir={run_dir}"], capsys, monkeypatch, tmp_path)
    assert code == 2, err
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prune-run: ") and message in lines[0], err
    assert not (run_dir / "pruned.pt").exists()
    if (run_dir / "report.json").exists():
        assert read_report(run_dir)["status"] == "failed"


def test_bad_input_from_a_real_process(tmp_path):
    result = prune_run(["sparsity=1.5", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "prune-run: sparsity=1.5: must be a number in [0, 1) (the fraction of prunable weights that are zero "
        "at the end)"]


def test_cuda_without_gpu_is_bad_input(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = prune_run(["device=cuda", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("prune-run: device=cuda: no CUDA GPU is available here; "
                                     "use device=cpu or device=auto")


@pytest.mark.parametrize("group", ["model", "dataset", "strategy", "schedule"])
def test_unknown_group_option_lists_the_choices(tmp_path, capsys, monkeypatch, group):
    code, out, err = run_in_process([f"{group}=nonexistent"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"prune-run: {group}=nonexistent: no such option; {group} is one of "
                                        f"{', '.join(options(group))}"]
    assert not (tmp_path / "outputs").exists()


def test_help_is_quick_and_lists_groups(tmp_path):
    result = prune_run(["--help"], cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    for group in ("model", "dataset", "strategy", "schedule"):
        assert f"{group}:" in result.stdout


def snapshot(directory):
    """Every file under ``directory`` with its bytes: what "nothing was changed" means."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed run, in its own directory."""
    cwd = tmp_path_factory.mktemp("finished")
    run_dir = cwd / "run"
    first = prune_run([*TINY, "sparsity=0.5", f"hydra.run.dir={run_dir}"], cwd=cwd)
    assert first.returncode == 0, first.stderr
    return cwd, run_dir


@pytest.mark.parametrize("spelling,extra,message", [
    ("hydra.run.dir={d}", ["sparsity=0.6"], "holds a completed run with a different config"),
    ("++hydra.run.dir={d}", ["sparsity=0.6"], "holds a completed run with a different config"),
    ("hydra.run.dir={d}", ["-cd", "{cwd}", "sparsity=0.6"], "holds a completed run with a different config"),
    ("hydra.run.dir={d}", ["train.lr=nan"], "holds a completed run with a different config"),
    ("hydra.run.dir={d}", ["--config-dir={cwd}", "train.lr=nan"], "holds a completed run with a different config"),
])
def test_a_refused_command_changes_no_file_of_an_existing_run(finished_run, spelling, extra, message, capsys,
                                                             monkeypatch):
    cwd, run_dir = finished_run
    before = snapshot(run_dir)
    options = [e.format(cwd=cwd) for e in extra if e.startswith("-") or e == "{cwd}"]  # options go first
    rest = [e for e in extra if not (e.startswith("-") or e == "{cwd}")]
    args = [*options, *TINY, "sparsity=0.5", *rest, spelling.format(d=run_dir)]
    code, _, err = run_in_process(args, capsys, monkeypatch, cwd)  # refused before Hydra: in-process is the same
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"prune-run: hydra.run.dir={run_dir}: {message}; choose another directory (nothing was changed)"]
    assert snapshot(run_dir) == before


def test_the_same_completed_run_again_changes_nothing(finished_run):
    cwd, run_dir = finished_run
    before = snapshot(run_dir)
    again = prune_run([*TINY, "sparsity=0.5", "progress=false", f"++hydra.run.dir={run_dir}"], cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert f"already complete in {run_dir}; nothing was changed" in again.stderr
    assert "90.00%" not in again.stdout and "50.00%" in again.stdout  # its own report, shown again
    assert snapshot(run_dir) == before


def test_an_unfinished_run_refused_for_a_bad_value_is_left_as_it_was(tmp_path, capsys, monkeypatch):
    import torch
    from prune_cli.config import compose_config, fingerprint
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"fingerprint": fingerprint(compose_config([*TINY])), "done": [], "position": None,
                "model": None, "masks": None, "record": {}, "extra": {}}, run_dir / "state.pt")
    before = snapshot(run_dir)
    # cuda:99 is refused with or without a GPU here (no machine has a hundred).
    for bad in (["device=cuda:99"], ["strategy=activation", "sparsity=0.9999"]):
        code, _, err = run_in_process([*TINY, *bad, f"hydra.run.dir={run_dir}"], capsys, monkeypatch, tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert snapshot(run_dir) == before


def test_names_that_become_paths_stay_inside_outputs(tmp_path):
    result = prune_run([*TINY, "strategy.name=/../../escaped"], cwd=tmp_path)
    assert result.returncode == 2
    assert "strategy.name='/../../escaped': must be a name of" in result.stderr
    assert not (tmp_path.parent / "escaped").exists() and not any(tmp_path.parent.glob("*escaped*"))
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made any directory
    # A sweep checks each job inside it, so there the name reaches the job's directory: made safe.
    from prune_cli.app.callbacks import job_dirname
    from prune_cli.app.resolvers import path_part
    assert "/" not in job_dirname(3, "strategy.name=/../../escaped") and "/" not in path_part("/../../escaped")


def test_default_run_directories_are_unique_per_process_and_safe():
    from prune_cli.app.resolvers import path_part, run_id
    from prune_cli.config import CONFIG_DIR
    from omegaconf import OmegaConf
    hydra = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "config.yaml").hydra, resolve=False)
    assert "${prune_cli.run_id:}" in hydra["run"]["dir"]
    assert "${prune_cli.path_part:${strategy.name}}" in hydra["run"]["dir"]
    assert "${prune_cli.run_id:}" in hydra["sweep"]["dir"]
    assert run_id() == str(os.getpid())
    assert path_part("/../../x") == "_.._.._x" and path_part("..") == "_.." and "/" not in path_part("a/b")


def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = prune_run([*TINY, f"hydra.run.dir={blocker / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"prune-run: hydra.run.dir={blocker / 'run'}: {blocker} is not a directory; choose another directory"]


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    import errno
    import prune_cli.storage.resume as resume

    def disk_full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(resume, "atomic_torch_save", disk_full)
    code, out, err = run_in_process([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], capsys, monkeypatch, tmp_path)
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"prune-run: run could not write its files ({tmp_path / 'run' / 'state.pt'}): "
                                           f"No space left on device")
    assert "Traceback" not in err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["status"] == "failed"


def _on_a_terminal(args, cwd):
    """prune-run with a pseudo-terminal as stdout and stderr: (exit code, bytes shown, seconds to the first)."""
    import pty
    import select
    import time
    master, slave = pty.openpty()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "prune_cli.app.cli", *args], cwd=cwd, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    shown, first = b"", None
    while True:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            first = first if first is not None else time.perf_counter() - started
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(), shown, first


def test_a_terminal_shows_a_line_at_once_which_the_first_output_wipes(tmp_path):
    """Within a second (torch alone takes two to load), then erased: bad input still reads as one line."""
    code, shown, first = _on_a_terminal(["sparsity=2"], tmp_path)
    assert code == 2
    assert shown == (b"prune-run: starting...\r\x1b[Kprune-run: sparsity=2: must be a number in [0, 1) (the "
                     b"fraction of prunable weights that are zero at the end)\r\n")
    assert first < 1.0


@pytest.mark.parametrize("args, message", [
    (["strategy=magnitude,magnitue"], "prune-run: strategy=magnitue: no such option; did you mean magnitude? "
                                      "strategy is one of"),
    (["sparsity=0.5,0.9", "sparsty=0.1,0.2"], "prune-run: sparsty=0.1: unknown key; did you mean sparsity?"),
])
def test_a_sweep_with_an_unknown_option_or_key_is_one_line_before_any_job(tmp_path, capsys, monkeypatch, args,
                                                                          message):
    code, _, err = run_in_process(["-m", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], capsys, monkeypatch,
                                  tmp_path)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.strip().startswith(message)
    assert not (tmp_path / "sweep").exists()
