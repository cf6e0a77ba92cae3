"""benchmarks/gpu_train.py keeps working: its CPU smoke run measures every contender and pairs fit with its
hand-written kind (the figures themselves are measured on a GPU, docs/benchmarks.md)."""
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_gpu_training_benchmark_runs_every_contender_on_the_cpu():
    proc = subprocess.run([sys.executable, "gpu_train.py", "--tiny", "--device", "cpu", "--compile-backend", "eager",
                           "--no-save"], cwd=BENCHMARKS, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "images/s" not in line]
    names = [row.split("|")[1].strip() for row in rows]
    assert names == ["hand eager fp32", "fit fp32", "hand bf16 channels_last", "fit bf16",
                     "hand compiled bf16 channels_last", "fit bf16 compile=reduce-overhead"]
    ratios = {row.split("|")[1].strip(): row.split("|")[5].strip() for row in rows}
    assert all(float(ratios[name]) > 0 for name in names if name.startswith("fit"))


def test_the_gpu_machine_scripts_parse_and_refuse_an_unknown_part(tmp_path):
    for script in ("gpu_wheels.sh", "gpu_check.sh"):
        assert subprocess.run(["bash", "-n", script], cwd=BENCHMARKS).returncode == 0, script
    proc = subprocess.run(["bash", "gpu_check.sh", "tset"], cwd=BENCHMARKS, capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path)))
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, "", "unknown part 'tset': install, tests, train, sweep or suite\n")
