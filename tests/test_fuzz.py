"""Hostile and careless input for every key of every group: a run either completes, or is refused with one
line naming the key and exit code 2 (or, for settings that make training diverge, fails with one line and
exit 1); never a traceback, never a report that looks finished when it is not.

The keys come from the composed config of every option in conf/, so a new option or key is fuzzed without
editing this file. Drawn with hypothesis, derandomised so that CI sees the same cases every time.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from prune_cli.config import compose_config

from conftest import options, run_in_process

# Small and fast wherever a drawn value is valid: a few steps of training, no latency timing.
BASE = ["train.epochs=1", "finetune.epochs=1", "train.batch_size=512", "finetune.batch_size=512",
        "checkpoint.every_s=0", "measure.latency=false", "strategy.epochs=1"]
VALUES = ["abc", "''", "null", "true", "false", "[]", "[1]", "[0]", "[-1]", "{}", "{a: 1}", "nan", "inf", "-inf",
          "-1", "0", "1", "0.5", "2.5", "1e30", "-1e30", str(2 ** 70), "/../../escaped", "' '"]
# Keys that decide which data or device is used rather than holding a value to check: their fuzzing would
# only measure how long a download or a search of the disk takes.
SKIP = {"dataset.root", "dataset.download", "cache.dir", "threads"}


def leaf_keys(cfg, prefix=""):
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{full}.")
        else:
            yield full


def cases():
    """(group option override, key) for every key of every option of every group, and the top level."""
    found = []
    top = OmegaConf.to_container(compose_config([]), resolve=True)
    groups = ("model", "dataset", "strategy", "schedule")
    found += [(None, key) for key in leaf_keys({k: v for k, v in top.items() if k not in groups})]
    for group in groups:
        for option in options(group):
            node = OmegaConf.to_container(compose_config([f"{group}={option}"])[group], resolve=True)
            found += [(f"{group}={option}", f"{group}.{key}") for key in leaf_keys(node)]
    return sorted({c for c in found if c[1] not in SKIP and not c[1].endswith("._target_")},
                  key=lambda c: (c[0] or "", c[1]))


CASES = cases()


def run(args, tmp_path, capsys, monkeypatch):
    return run_in_process(args, capsys, monkeypatch, tmp_path)


def test_every_group_and_key_is_fuzzed():
    keys = {key for _, key in CASES}
    assert {"sparsity", "seed", "train.lr", "finetune.epochs", "measure.latency_budget_s", "export.min_sparsity",
            "strategy.ramp", "schedule.reinit", "dataset.train_size", "model.hidden", "model.arch"} <= keys
    assert len(CASES) > 80


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), value=st.sampled_from(VALUES))
def test_a_run_completes_or_refuses_with_one_line(tmp_path_factory, capsys, monkeypatch, case, value):
    option, key = case
    tmp_path = tmp_path_factory.mktemp("fuzz")
    run_dir = tmp_path / "run"
    no_data = [f"dataset.root={tmp_path / 'no-data'}"]
    data = {"dataset=imagefolder": no_data, "dataset=custom": []}.get(option, ["dataset.download=false", *no_data]) \
        if option and option.startswith("dataset=") and option not in ("dataset=digits", "dataset=synthetic") else []
    args = [*([option] if option else []), *BASE, *data, f"{key}={value}", f"hydra.run.dir={run_dir}"]
    if key == "strategy.epochs" or not _takes(option, "strategy.epochs"):
        args.remove("strategy.epochs=1")
    code, out, err = run(args, tmp_path, capsys, monkeypatch)
    assert "Traceback" not in err + out, args
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else None
    if code == 0:
        assert report is not None and report["status"] == "completed", (args, err)
        return
    lines = err.strip().splitlines()
    assert code in (1, 2), (args, code, err)
    assert len(lines) == 1 and lines[0].startswith("prune-run: "), (args, err)
    assert report is None or report["status"] == "failed", args
    if code == 1:  # training itself failed (e.g. a learning rate that diverges): said so, with the step
        assert "non-finite loss" in lines[0], (args, err)
    else:
        name = key.split(".")[-1]
        assert name in lines[0] or "sparsity" in lines[0] or "dataset=" in lines[0] or "model=" in lines[0], \
            (args, err)


@pytest.mark.parametrize("option", sorted({c[0] for c in CASES}, key=str))
def test_every_key_of_every_option_is_checked_before_any_work(option):
    """Exhaustively, without running: every key of the option, with every hostile value, is accepted or
    refused by the schema with one line naming the key; nothing else escapes the check."""
    import copy
    import yaml
    from prune_cli.errors import UsageError
    from prune_cli.validate import validate
    composed = compose_config([option] if option else [])
    keys = [key for opt, key in CASES if opt == option]
    for key in keys:
        for value in VALUES:
            cfg = copy.deepcopy(composed)
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False, force_add=True)
            try:
                validate(cfg)
            except UsageError as err:
                message = str(err)
                assert "\n" not in message and (key in message or key.split(".")[-1] in message
                                                 or message.startswith("dataset.name=")), (key, value, message)


def _takes(option, key):
    cfg = compose_config([option] if option else [])
    return OmegaConf.select(cfg, key) is not None


@pytest.mark.parametrize("override,message", [
    ("sparsity=[1", "prune-run: sparsity=[1: cannot be parsed:"),
    ("strategy.foo=1", "prune-run: Could not override 'strategy.foo'.; To append to your config use"),
    ("+schedule.foo=1", "prune-run: schedule.foo=1: unknown key; schedule=oneshot takes _target_, name"),
])
def test_overrides_hydra_cannot_apply_are_one_line(tmp_path, capsys, monkeypatch, override, message):
    code, out, err = run([override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "run").exists()
