import contextlib
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

# Small and fast: the real numbers live in benchmarks/, not here. On the CPU, where the figures the tests pin
# (bit-identical resume, exact losses and messages) hold on any machine; a test of another device says so
# after these (a later override wins), and the CUDA paths have tests/test_gpu.py.
TINY = ["device=cpu", "train.epochs=3", "finetune.epochs=2", "checkpoint.every_s=0", "measure.latency_budget_s=0.01"]


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"


def schema_errors(report: dict) -> list[str]:
    """What in ``report`` does not match docs/report.schema.json (empty when it matches)."""
    import jsonschema
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:200]}" for e in validator.iter_errors(report)]


@pytest.fixture(scope="session", autouse=True)
def _every_report_matches_the_schema(tmp_path_factory):
    """After the whole session: every report.json a real run wrote during the tests (one with its pruned.pt
    beside it) matches docs/report.schema.json, so a field added without documenting it fails CI."""
    yield
    base = tmp_path_factory.getbasetemp()
    bad = []
    for path in base.rglob("report.json"):
        if (path.parent / "pruned.pt").exists():
            errors = schema_errors(json.loads(path.read_text()))
            if errors:
                bad.append(f"{path}: {errors[0]}")
    assert not bad, f"{len(bad)} report(s) do not match docs/report.schema.json; first: {bad[0]}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own dense cache, never the user's."""
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


class Stopped(Exception):
    pass


@contextlib.contextmanager
def stopped_after_the_first_finetune_epoch(monkeypatch):
    """The run raises ``Stopped`` right after saving its state at the end of fine-tune epoch 1 (as a kill
    there would leave it); the patch is gone afterwards."""
    from prune_cli.storage.resume import RunState
    save = RunState.epoch_end

    def stop_after_first_epoch(self, stage, epoch, *saved):
        save(self, stage, epoch, *saved)
        if stage == "round1.finetune" and epoch == 1:
            raise Stopped

    monkeypatch.setattr(RunState, "epoch_end", stop_after_first_epoch)
    with pytest.raises(Stopped):
        yield
    monkeypatch.undo()


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


# ``python -m prune_cli.app.cli`` with SIGINT and SIGHUP at their defaults, for a test that stops it with one: a
# suite started in the background (``pytest &``, nohup) has them ignored, children inherit that, and Python then
# keeps them ignored, as a program started that way should. (Set in the child itself: a ``preexec_fn`` is unsafe
# in a process with threads, as pytest-xdist's workers are.)
CLI_WITH_STOP_SIGNALS = [sys.executable, "-c", "import runpy, signal; "
                         "signal.signal(signal.SIGINT, signal.default_int_handler); "
                         "signal.signal(signal.SIGHUP, signal.SIG_DFL); "
                         "runpy.run_module('prune_cli.app.cli', run_name='__main__', alter_sys=True)"]


def read_report(run_dir) -> dict:
    return json.loads((Path(run_dir) / "report.json").read_text())


def options(group: str) -> list[str]:
    """Every option of a config group, from the YAML files in conf/: tests parametrised over these cover a
    new option without being edited."""
    from prune_cli.config import CONFIG_DIR
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def strategy_kind(overrides) -> str:
    """"unstructured", "structured" or "smaller_model": what the composed strategy config builds."""
    from prune_cli.config import compose_config, instantiate
    strategy = instantiate(compose_config(list(overrides)).strategy, "strategy")
    if strategy.loop == "smaller_model":
        return "smaller_model"
    return "structured" if strategy.structured else "unstructured"


def largest_unit(overrides) -> int:
    """The most prunable weights removing one unit zeroes (its row and the columns reading it), over every
    layer whose units can be removed: the exact tolerance of whole-unit selection."""
    from prune_cli.config import compose_config, plain
    from prune_cli.data import load_dataset
    from prune_cli.models import build_for
    from prune_cli.pruning.masks import prunable_names
    from prune_cli.pruning.units import unit_layers, unit_masks, zeroed_weight_count
    cfg = compose_config(list(overrides))
    info = load_dataset(cfg.dataset).info
    model, _ = build_for(plain(cfg.model), info)
    example = torch.zeros(1, *info.input_shape)
    layers = unit_layers(model, example)
    prunable = prunable_names(model)
    return max(zeroed_weight_count(unit_masks(model, example, {layer.name: [0]}, layers=layers), prunable)
               for layer in layers)


def check_sparsity(report, run_dir, overrides) -> None:
    """The sparsity counted from ``pruned.pt`` is exactly what the strategy's kind can reach, and the
    report says so: round(s * n) zeros (unstructured), the closest whole-unit count (structured), at most
    (1 - s) of the dense weights kept (a smaller model)."""
    from prune_cli.storage.safe_load import safe_load
    target = report["sparsity"]["target"]
    state = safe_load(Path(run_dir) / "pruned.pt")["state_dict"]
    names = [layer["name"] for layer in report["layers"] if not layer.get("ignored")]
    total = sum(state[n].numel() for n in names)
    zeros = sum(int((state[n] == 0).sum()) for n in names)
    kind = strategy_kind(overrides)
    if kind == "smaller_model":
        dense = report["compress"]["dense_prunable_weights"]
        assert report["compress"]["prunable_weights"] == total <= (1 - target) * dense
        assert report["sparsity"]["achieved"] == (dense - total) / dense  # removed weights over the dense count
        return
    assert report["sparsity"]["achieved"] == zeros / total
    if kind == "unstructured":
        assert zeros == round(target * total)
    else:
        assert abs(zeros - target * total) <= largest_unit(overrides)


def run_in_process(args, capsys, monkeypatch, cwd):
    """``prune-run`` through its console entry in this process: (exit code, stdout, stderr)."""
    from prune_cli.app import cli
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["prune-run", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err
