"""Sweeps as a user runs them: ``prune-run -m`` with the basic, joblib and submitit launchers, then
``prune-compare`` on the sweep directory. Tiny settings: the point is orchestration, not accuracy."""
import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import prune_run, read_report

# Few, large batches and no latency timing: each job takes well under a second once torch is loaded.
QUICK = ["device=cpu", "train.epochs=2", "finetune.epochs=1", "train.batch_size=256", "finetune.batch_size=256",
         "measure.latency=false", "checkpoint.every_s=0"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
# Tiny models on a shared machine run several times faster on one thread (no spinning on busy cores).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sweep(tmp_path, *overrides, name="sweep", cache="cache", timeout=300):
    """``prune-run -m`` in a subprocess, with its own dense cache; returns (result, sweep_dir, cache_dir)."""
    sweep_dir, cache_dir = tmp_path / name, tmp_path / cache
    result = prune_run(["-m", *overrides, *QUICK, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                       env={"PRUNE_CLI_CACHE": str(cache_dir), **ONE_THREAD}, timeout=timeout)
    return result, sweep_dir, cache_dir


def summary_lines(stderr: str) -> list[str]:
    """The jobs the sweep's closing summary names: the indented lines right after its header (a warning that
    a library printed elsewhere, with its own indented source line, is not one of them)."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if "job(s) of the sweep" in line)
    named = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        named.append(line.strip())
    return named


def job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: int(p.name.split("_", 1)[0]))


def dense_sources(sweep_dir: Path) -> list[str]:
    return sorted(r["cache"]["dense"] for r in map(read_report, job_dirs(sweep_dir))
                  if r["status"] == "completed")


def cache_entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("dense-*.pt"))


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("basic")
    return sweep(tmp_path, "strategy=magnitude,gradient", "sparsity=0.5,0.9")


def test_sweep_runs_every_job_and_trains_the_dense_model_once(basic_sweep):
    result, sweep_dir, cache_dir = basic_sweep
    assert result.returncode == 0, result.stderr
    jobs = job_dirs(sweep_dir)
    assert [p.name.split("_", 1)[0] for p in jobs] == ["000", "001", "002", "003"]
    for job in jobs:
        report = read_report(job)
        assert report["status"] == "completed"
        assert {"report.md", "pruned.pt", ".hydra"} <= {p.name for p in job.iterdir()}
        # Readable names: what varies is there, knobs that do not change the result are not.
        assert f"sparsity={report['sparsity']['target']}" in job.name
        assert f"strategy={report['experiment']['strategy']}" in job.name
        assert "measure" not in job.name and "checkpoint" not in job.name
    assert dense_sources(sweep_dir) == ["computed", "reused", "reused", "reused"]
    assert len(cache_entries(cache_dir)) == 1
    # the sweep ends saying what to run next
    assert result.stderr.strip().splitlines()[-1] == (f"prune-run: every job of the sweep completed; compare them "
                                                      f"with: prune-compare {sweep_dir}")


def test_a_bad_job_is_named_the_others_complete_and_the_sweep_exits_1(tmp_path):
    # The bad job comes first: the job after it must still run.
    result, sweep_dir, _ = sweep(tmp_path, "sparsity=1.5,0.5")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "1 job(s) of the sweep" in result.stderr
    named = summary_lines(result.stderr)
    assert len(named) == 1 and named[0].startswith("000_") and "sparsity=1.5" in named[0]
    assert "must be a number in [0, 1)" in named[0]
    statuses = [read_report(job)["status"] for job in job_dirs(sweep_dir)]
    assert statuses == ["failed", "completed"]


def test_a_job_writing_outside_the_sweep_directory_is_still_counted(tmp_path):
    """The summary counts every job Hydra launched, not only those whose directory it finds below the sweep."""
    result, sweep_dir, _ = sweep(tmp_path, "sparsity=0.5,1.5", "hydra.sweep.subdir=../elsewhere_${hydra.job.num}")
    assert result.returncode == 1, result.stderr
    named = summary_lines(result.stderr)
    assert len(named) == 1 and "elsewhere_1" in named[0] and "must be a number in [0, 1)" in named[0]
    assert sorted(p.name for p in (sweep_dir / ".jobs").iterdir()) == ["0", "1"]


def test_an_unknown_option_in_a_sweep_list_is_bad_input_before_any_job(tmp_path):
    result, sweep_dir, _ = sweep(tmp_path, "strategy=magnitude,nonexistent")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("prune-run: strategy=nonexistent: no such option; strategy is one of "
                                     "activation, apoz, compress, gradient, l0, l1, magnitude, random, sparsegpt, "
                                     "wanda")
    assert not sweep_dir.exists() or not [p for p in sweep_dir.iterdir() if p.is_dir()]  # no job ran


def test_joblib_sweep_trains_the_dense_model_once_and_survives_failed_jobs(tmp_path):
    """n_jobs=2: jobs start two at a time in worker processes and want the same dense model, so one waits on
    the cache lock and reuses it. lr=1e30 makes dense training diverge (non-finite loss) in half the jobs:
    they are named, the others complete, and the diverged model never reaches the cache."""
    result, sweep_dir, cache_dir = sweep(tmp_path, *JOBLIB, "train.lr=1e-3,1e30",
                                         "strategy=magnitude,gradient", "sparsity=0.5,0.9")
    assert "Joblib.Parallel(n_jobs=2" in result.stdout
    assert result.returncode == 1, result.stderr
    assert "4 job(s) of the sweep" in result.stderr
    named = summary_lines(result.stderr)
    assert len(named) == 4 and all("train.lr=1e+30" in line and "non-finite loss" in line for line in named)
    reports = [read_report(job) for job in job_dirs(sweep_dir)]
    assert len(reports) == 8
    good = [r for r in reports if r["status"] == "completed"]
    assert {(r["experiment"]["strategy"], r["sparsity"]["target"]) for r in good} == {
        ("magnitude", 0.5), ("magnitude", 0.9), ("gradient", 0.5), ("gradient", 0.9)}
    assert dense_sources(sweep_dir) == ["computed", "reused", "reused", "reused"]
    # Only the good dense model was stored; the diverged one left no entry and no half-written file.
    assert len(cache_entries(cache_dir)) == 1
    assert not list(cache_dir.glob(".*.tmp"))


def test_compare_on_the_sweep_dir_matches_the_reports(basic_sweep, tmp_path):
    result, sweep_dir, _ = basic_sweep
    assert result.returncode == 0, result.stderr
    out = tmp_path / "compare"
    compared = subprocess.run([sys.executable, "-m", "prune_cli.comparison", str(sweep_dir), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    reports = {(r["experiment"]["strategy"], r["sparsity"]["target"]): r
               for r in map(read_report, job_dirs(sweep_dir))}
    assert sorted((row["strategy"], float(row["target_sparsity"])) for row in rows) == sorted(reports)
    for row in rows:
        report = reports[(row["strategy"], float(row["target_sparsity"]))]
        assert row["n"] == "1"
        for column, value in [("accuracy_finetuned_mean", report["accuracy"]["finetuned"]),
                              ("accuracy_pruned_mean", report["accuracy"]["pruned"]),
                              ("accuracy_dense_mean", report["accuracy"]["dense"]),
                              ("sparsity_achieved_mean", report["sparsity"]["achieved"])]:
            assert float(row[column]) == pytest.approx(value, abs=1e-12), column
    md_rows = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| ")]
    assert len(md_rows) == 5  # header + 4 rows
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR" and png.endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", png[16:24])
    assert width > 200 and height > 200


def test_slurm_launcher_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml, turned into an sbatch script the way the submitit plugin does,
    without a cluster: every key must be one submitit accepts, and the placeholders must reach sbatch."""
    pytest.importorskip("submitit")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict
    from submitit import AutoExecutor
    from submitit.slurm.slurm import SlurmExecutor
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    from prune_cli.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.timeout_min=30"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path)
        cfg.hydra.job.name = "prune-run"
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    launcher = instantiate(launcher_cfg)
    assert type(launcher).__name__ == "SlurmLauncher"
    # What BaseSubmititLauncher.launch does with its params, minus the submission.
    params = dict(launcher.params)
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # pretend srun exists
    executor = AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                            slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB", "#SBATCH --job-name=prune-run"):
        assert line in script
    assert executor._executor.max_num_timeout == 2


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path, request):
    """The submitit launcher, run locally: the same code path as SLURM from the job's side (a fresh process per
    job, callbacks, cache, report) and from the sweep's (submitit collects the results, the summary names the
    bad job). Opt-in (``pytest -m slow``): every job starts its own interpreter and submitit polls for
    results, so three tiny jobs take 15-35 s on a shared 2-core machine, over this suite's budget."""
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("PRUNE_CLI_SLOW_TESTS"):
        pytest.skip("slow: run with `pytest -m slow` (or PRUNE_CLI_SLOW_TESTS=1)")
    result, sweep_dir, cache_dir = sweep(tmp_path, "hydra/launcher=submitit_local", "sparsity=0.5,1.5,0.9",
                                         timeout=600)
    assert result.returncode == 1, result.stderr
    named = summary_lines(result.stderr)
    assert len(named) == 1 and named[0].startswith("001_") and "sparsity=1.5" in named[0]
    assert [read_report(job)["status"] for job in job_dirs(sweep_dir)] == ["completed", "failed", "completed"]
    assert dense_sources(sweep_dir) == ["computed", "reused"]
    assert len(cache_entries(cache_dir)) == 1
    assert list((sweep_dir / ".submitit").glob("*/*_log.out"))  # the jobs' own output lives here


# --- job directory names and the summary callback on their own (no processes) ---------------------------------

def test_job_directory_names_stay_under_the_filesystem_limit():
    from prune_cli.app.callbacks import NAME_LIMIT, job_dirname
    assert job_dirname(3, "seed=1,sparsity=0.9") == "003_seed=1,sparsity=0.9"
    assert job_dirname(0, "") == "000_"
    assert job_dirname(1234, "seed=1") == "1234_seed=1"
    many = ",".join(f"train.setting_{i}=value_{i}" for i in range(40))
    other = many.replace("value_39", "value_X")
    short, short_other = job_dirname(12, many), job_dirname(12, other)
    assert len(short.encode()) <= NAME_LIMIT < 255 and short.startswith("012_train.setting_0=value_0,")
    assert short != short_other  # same prefix, told apart by the hash of the full list
    accents = job_dirname(1, "é" * 300)  # never cut inside a multi-byte character
    assert len(accents.encode()) <= NAME_LIMIT and accents.encode().decode() == accents



def _job_config(sweep_dir: Path, num: int, name: str):
    from omegaconf import OmegaConf
    from hydra.types import RunMode
    return OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep_dir)},
                                       "job": {"num": num, "override_dirname": name},
                                       "overrides": {"task": [name]},
                                       "runtime": {"output_dir": str(sweep_dir / f"{num}_{name}")}}})


@pytest.mark.parametrize("error", [TypeError, RuntimeError])
def test_a_crashing_job_is_recorded_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch, error):
    """An unexpected exception (a bug) in one job must not lose the sweep summary: the job prints the
    traceback, records the failure and returns normally, so Hydra's sweeper sees a finished job (its public
    ``JobReturn.status`` is COMPLETED; nothing rewrites it), and the job's line says what happened."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobStatus

    from prune_cli.app import cli
    from prune_cli.app.callbacks import SweepSummary
    from prune_cli.pipeline import experiment

    class Crashing:
        def __init__(self, *args, **kwargs):
            raise TypeError("boom")

    monkeypatch.setattr(experiment, "Experiment", Crashing)
    config = _job_config(tmp_path, 0, "seed=1")
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: config.hydra))
    job_dir = tmp_path / "0_seed=1"
    job_dir.mkdir()
    from omegaconf import OmegaConf
    returned = cli.run_job(OmegaConf.create({"progress": False}))
    assert returned == {"status": "failed", "error": "TypeError: boom"}
    assert read_report(job_dir) == {"status": "failed", "error": "TypeError: boom"}
    SweepSummary().on_job_end(config, JobReturn(status=JobStatus.COMPLETED, _return_value=returned))
    err = capsys.readouterr().err
    assert "job 0 (seed=1) crashed; the sweep goes on" in err and "TypeError: boom" in err and "Traceback" in err
    assert err.strip().splitlines()[-1] == "prune-run: job 0 (seed=1): failed: TypeError: boom"


def test_a_finished_job_gets_one_line_with_its_accuracy(tmp_path, capsys):
    from hydra.core.utils import JobReturn, JobStatus

    from prune_cli.app.callbacks import SweepSummary
    report = {"status": "completed", "accuracy": {"finetuned": 0.91525}, "sparsity": {"achieved": 0.9}}
    SweepSummary().on_job_end(_job_config(tmp_path, 3, "sparsity=0.9"),
                              JobReturn(status=JobStatus.COMPLETED, _return_value=report))
    assert capsys.readouterr().err == "prune-run: job 3 (sparsity=0.9): test accuracy 91.53%, sparsity 90.00%\n"


def test_summary_names_failed_and_unfinished_jobs(tmp_path, capsys):
    from omegaconf import OmegaConf

    from prune_cli.app.callbacks import SweepSummary
    for num, name, report in [(0, "seed=0", {"status": "completed"}),
                              (1, "seed=1", {"status": "failed", "error": "non-finite loss"}),
                              (2, "seed=2", None)]:  # killed: Hydra made the directory, no report
        job = tmp_path / f"{num}_{name}"
        (job / ".hydra").mkdir(parents=True)
        if report is not None:
            (job / "report.json").write_text(json.dumps(report))
    (tmp_path / "compare").mkdir()  # prune-compare output is not a job
    with pytest.raises(SystemExit) as exit_:
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert "2 job(s) of the sweep" in lines[0]
    assert lines[1].strip() == "1_seed=1: failed: non-finite loss"
    assert lines[2].strip().startswith("2_seed=2: no report.json")


def test_summary_only_points_to_the_comparison_when_every_job_completed(tmp_path, capsys):
    from omegaconf import OmegaConf

    from prune_cli.app.callbacks import SweepSummary
    job = tmp_path / "0_seed=0"
    (job / ".hydra").mkdir(parents=True)
    (job / "report.json").write_text(json.dumps({"status": "completed"}))
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert capsys.readouterr().err.splitlines() == [
        f"prune-run: every job of the sweep completed; compare them with: prune-compare {tmp_path}"]


def test_jobs_sharing_a_gpu_each_hold_their_share_of_its_memory(monkeypatch):
    """gpu_memory_fraction: auto bounds a joblib sweep's job to 1/n_jobs of the GPU (torch's public
    per-process bound); a number is taken as it is; on the CPU, or alone, nothing is bounded. The library API
    puts the bound before the run back."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from prune_cli.app.api import host_kept
    from prune_cli.pipeline import memory
    bounds = {0: 1.0}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda index: bounds[index])
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, index: bounds.__setitem__(index, fraction))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert memory.bound_gpu_memory("auto", cuda) is None and bounds == {0: 1.0}  # no sweep here
    assert memory.bound_gpu_memory("auto", cpu) is None and memory.bound_gpu_memory(0.5, cpu) is None
    launcher = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 8}
    monkeypatch.setattr(HydraConfig.instance(), "cfg", OmegaConf.create({"hydra": {"launcher": launcher}}))
    with host_kept():
        assert memory.bound_gpu_memory("auto", cuda) == 0.125 and bounds == {0: 0.125}
        assert memory.bound_gpu_memory(0.3, torch.device("cuda", 0)) == 0.3 and bounds == {0: 0.3}
        launcher["n_jobs"] = -1  # joblib's default, a job per core: how many share the GPU is not known
        monkeypatch.setattr(HydraConfig.instance(), "cfg", OmegaConf.create({"hydra": {"launcher": launcher}}))
        assert memory.bound_gpu_memory("auto", cuda) is None and bounds == {0: 1.0}  # the earlier job's bound goes
        assert memory.bound_gpu_memory(0.3, cuda) == 0.3
        # The model-size check counts only the share (torch's calls want the index of an index-less "cuda").
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: {0: (60 << 30, 80 << 30)}[index])
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: {0: 1 << 30}[index])
        assert memory.available_bytes(cuda) == int(0.3 * (80 << 30)) - (1 << 30)
    assert bounds == {0: 1.0} and memory.GPU_MEMORY_BEFORE == {}
