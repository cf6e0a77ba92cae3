"""Hostile and careless input for every key of every group: a run either completes, or is refused with one
line naming the key and exit code 2 (or, for settings that make training diverge, fails with one line and
exit 1); never a traceback, never a report that looks finished when it is not.

The keys come from the composed config of every option in conf/, so a new option or key is fuzzed without
editing this file. Drawn with hypothesis, derandomised so that CI sees the same cases every time.
"""
import json
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from prune_cli.config import compose_config

from conftest import options, run_in_process

# Small and fast wherever a drawn value is valid: a few steps of training, no latency timing.
BASE = ["device=cpu", "train.epochs=1", "finetune.epochs=1", "train.batch_size=512", "finetune.batch_size=512",
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


def _data_args(option, tmp_path):
    """Keep a torchvision or image set from looking for files anywhere real (missing files are one line)."""
    no_data = [f"dataset.root={tmp_path / 'no-data'}"]
    if not option or not option.startswith("dataset=") or option in ("dataset=digits", "dataset=synthetic"):
        return []
    return {"dataset=imagefolder": no_data, "dataset=custom": []}.get(option, ["dataset.download=false", *no_data])


def _check_outcome(drawn, tmp_path, capsys, monkeypatch):
    """Run the drawn ``[(option, key, value)]`` together and hold the promise for any of them: exit 0 with a
    completed report, exit 2 with one line naming one of the keys (or the data or model it concerns), or exit
    1 with one line for training that diverged; never a traceback."""
    run_dir = tmp_path / "run"
    options_ = list(dict.fromkeys(option for option, _, _ in drawn if option))
    keys = [key for _, key, _ in drawn]
    args = [*options_, *BASE, *(a for o in options_ for a in _data_args(o, tmp_path)),
            *(f"{key}={value}" for _, key, value in drawn), f"hydra.run.dir={run_dir}"]
    if "strategy.epochs" in keys or not all(_takes(o, "strategy.epochs") for o in options_ or [None]):
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
        assert "non-finite" in lines[0] and "(try a smaller lr)" in lines[0], (args, err)
    else:
        # a refusal names a drawn key, the group of a drawn option, or a key of BASE it contradicts
        names = [key.split(".")[-1] for key in keys] + [o.split("=")[0] for o in options_] \
            + [a.split("=")[0] for a in BASE]
        assert any(name in lines[0] for name in names) or "sparsity" in lines[0] or "dataset=" in lines[0] \
            or "model=" in lines[0], (args, err)


# PRUNE_FUZZ_EXAMPLES=200 for a longer hunt than CI's (the same derandomised start, more cases).
EXAMPLES = int(os.environ.get("PRUNE_FUZZ_EXAMPLES", "15"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(case=st.sampled_from(CASES), value=st.sampled_from(VALUES))
def test_a_run_completes_or_refuses_with_one_line(tmp_path_factory, capsys, monkeypatch, case, value):
    _check_outcome([(*case, value)], tmp_path_factory.mktemp("fuzz"), capsys, monkeypatch)


def _compatible(first, second) -> bool:
    """Two drawn keys can be set in one command: different keys, and options of different groups (or one)."""
    (option_a, key_a), (option_b, key_b) = first, second
    if key_a == key_b:
        return False
    return not (option_a and option_b and option_a != option_b
                and option_a.split("=")[0] == option_b.split("=")[0])


@FUZZ
@given(first=st.sampled_from(CASES), second=st.sampled_from(CASES),
       values=st.tuples(st.sampled_from(VALUES), st.sampled_from(VALUES)))
def test_two_keys_drawn_together_complete_or_refuse_with_one_line(tmp_path_factory, capsys, monkeypatch, first,
                                                                  second, values):
    """Values that are each fine alone can fail together (a batch against a split size, an epoch count
    against a schedule's rounds): the same promise holds for pairs."""
    assume(_compatible(first, second))
    _check_outcome([(*first, values[0]), (*second, values[1])], tmp_path_factory.mktemp("fuzz"), capsys,
                   monkeypatch)


# Valid values only, several keys at once: the combinations a careful user could write.
FINE = {"sparsity": ["0.5", "0.99", "0"], "train.batch_size": ["1", "7", "100000"], "finetune.epochs": ["0", "3"],
        "train.epochs": ["1", "2"], "dataset.val_fraction": ["0", "0.5", "0.99"], "finetune.lr": ["1e-5", "10"],
        "eval_batch_size": ["1", "100000"], "strategy.scope": ["layer", "global"],
        "schedule": ["oneshot", "iterative", "gradual", "lottery"], "strategy": ["magnitude", "random", "gradient"],
        "finetune.on": ["masked", "shrunk"], "finetune.distill": ["true", "false"]}


@settings(FUZZ, max_examples=max(6, EXAMPLES // 3))  # these train: each example takes seconds
@given(picked=st.dictionaries(st.sampled_from(sorted(FINE)), st.none(), min_size=2, max_size=4),
       data=st.data())
def test_valid_values_drawn_together_complete_or_refuse_with_one_line(tmp_path_factory, capsys, monkeypatch,
                                                                      picked, data):
    drawn = []
    for key in sorted(picked):
        value = data.draw(st.sampled_from(FINE[key]), label=key)
        drawn.append((f"{key}={value}", "seed", "0") if key in ("schedule", "strategy") else (None, key, value))
    _check_outcome(drawn, tmp_path_factory.mktemp("fuzz"), capsys, monkeypatch)


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
    ("strategy.foo=1", "prune-run: strategy.foo=1: unknown key; did you mean strategy.scope or strategy.ignore or "
                       "strategy.name?"),
    ("sparsty=0.9", "prune-run: sparsty=0.9: unknown key; did you mean sparsity?"),
    ("train.lrr=0.1", "prune-run: train.lrr=0.1: unknown key; did you mean train.lr?"),
    ("strategy=magnitue", "prune-run: strategy=magnitue: no such option; did you mean magnitude? strategy is one "
                          "of activation, apoz, compress, gradient, l0, l1, magnitude, random, sparsegpt, wanda"),
    ("strategy=magnitude,gradient", "prune-run: strategy=magnitude,gradient: a comma list is a sweep: add -m "
                                    "(prune-run -m ... strategy=magnitude,gradient); a list value is written with "
                                    "brackets, e.g. strategy=[magnitude,gradient]"),
    ("+schedule.foo=1", "prune-run: schedule.foo=1: unknown key; schedule=oneshot takes _target_, name"),
])
def test_overrides_hydra_cannot_apply_are_one_line(tmp_path, capsys, monkeypatch, override, message):
    code, out, err = run([override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "run").exists()
