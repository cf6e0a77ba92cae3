"""prune_cli as a library leaves its host as it found it: a notebook that calls ``prune_cli.run`` keeps its
streams, warning filters, garbage collector, thread count and random stream."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import gc, sys, warnings
import torch
torch.set_num_threads(2)
torch.set_float32_matmul_precision("medium")
torch.manual_seed(1234)
gc.disable()
before = (sys.stdout, sys.stderr, list(warnings.filters), gc.isenabled(), gc.get_freeze_count(),
          torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.get_rng_state().clone())
import prune_cli
assert list(warnings.filters) == before[2], "importing prune_cli changed the warning filters"
report = prune_cli.run(["device=cpu", "train.epochs=1", "finetune.epochs=1", "progress=false",
                        "measure.latency=false", "threads=1", "quantize=int8_dynamic", "model=lenet300"],
                       run_dir=sys.argv[1])
assert report["status"] == "completed"
after = (sys.stdout, sys.stderr, list(warnings.filters), gc.isenabled(), gc.get_freeze_count(),
         torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.get_rng_state())
names = ["stdout", "stderr", "warnings.filters", "gc.isenabled", "gc.get_freeze_count", "torch threads",
         "matmul precision"]
changed = [name for name, a, b in zip(names, before, after) if a != b]
if not torch.equal(before[7], after[7]):
    changed.append("torch rng state")
print("changed:", changed)
"""


def test_run_leaves_streams_warnings_gc_threads_and_rng_as_they_were(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "changed: []"


def test_the_console_exits_the_ordinary_way_so_atexit_handlers_run(tmp_path):
    """Loggers such as MLflow and TensorBoard flush in atexit handlers: the command must not skip them."""
    script = ("import atexit, sys\natexit.register(lambda: print('atexit ran', flush=True))\n"
              "from prune_cli.app.cli import console_main\nsys.argv = ['prune-run', *sys.argv[1:]]\nconsole_main()\n")
    for args, code in ((["train.epochs=1", "finetune.epochs=1", "measure.latency=false", "device=cpu",
                         f"hydra.run.dir={tmp_path / 'run'}"], 0), (["sparsity=2"], 2)):
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert proc.returncode == code, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "atexit ran"
