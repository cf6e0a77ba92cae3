"""The extension contract of docs/extending.md, exercised as a user would: a strategy and a schedule in the
user's own module and config directory, with no change to the package."""
import textwrap

import torch

import prune_cli
from prune_cli.pruning.masks import topk_masks
from prune_cli.storage.safe_load import safe_load

from conftest import prune_run, read_report

SMALLEST = '''
import torch
from prune_cli import Strategy


class Smallest(Strategy):
    """Keeps the smallest weights: the opposite of magnitude pruning."""
    name = "smallest"

    def __init__(self, power: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.power = float(power)

    def score(self, ctx):
        params = dict(ctx.model.named_parameters())
        return {name: -params[name].detach().abs() ** self.power for name in ctx.prunable}
'''

HALVES = '''
from prune_cli import Schedule


class Halves(Schedule):
    """Two rounds: half the target, then all of it."""
    name = "halves"

    def targets(self, sparsity):
        return [sparsity / 2, float(sparsity)]
'''


def user_project(tmp_path):
    (tmp_path / "mystrategies.py").write_text(SMALLEST)
    (tmp_path / "myschedules.py").write_text(HALVES)
    conf = tmp_path / "myconf"
    (conf / "strategy").mkdir(parents=True)
    (conf / "schedule").mkdir()
    (conf / "strategy" / "mine.yaml").write_text(textwrap.dedent("""\
        _target_: mystrategies.Smallest
        name: mine
        scope: global
        power: 2.0
        """))
    (conf / "schedule" / "halves.yaml").write_text("_target_: myschedules.Halves\nname: halves\n")
    return conf


def test_a_users_strategy_runs_through_prune_run_and_its_masks_are_its_scores(tmp_path):
    conf = user_project(tmp_path)
    common = ["train.epochs=2", "checkpoint.every_s=0", "measure.latency=false", "finetune.epochs=0"]
    mine = prune_run(["--config-dir", str(conf), "strategy=mine", "sparsity=0.5", *common,
                      f"hydra.run.dir={tmp_path / 'mine'}"], cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr[-2000:]
    prune_cli.run(["sparsity=0.0", *common], tmp_path / "dense")  # the same dense model, unpruned
    report = read_report(tmp_path / "mine")
    assert report["strategy"]["name"] == "mine" and report["sparsity"]["achieved"] == 0.5
    dense_weights = safe_load(tmp_path / "dense" / "pruned.pt")["state_dict"]
    saved = safe_load(tmp_path / "mine" / "pruned.pt")
    names = [layer["name"] for layer in report["layers"]]
    expected = topk_masks({n: -dense_weights[n].abs() ** 2 for n in names}, 0.5, "global")
    for name in names:
        assert torch.equal(saved["masks"][name], expected[name].bool()), name
        kept = dense_weights[name].abs()[saved["masks"][name]]
        assert torch.equal(saved["state_dict"][name][saved["masks"][name]].abs(), kept)
    # The smallest weights survived: every kept |w| is at most every pruned |w|.
    everything = torch.cat([dense_weights[n].abs().flatten() for n in names])
    keep = torch.cat([saved["masks"][n].flatten() for n in names])
    assert float(everything[keep].max()) <= float(everything[~keep].min())


def test_a_users_schedule_runs_its_rounds(tmp_path, monkeypatch):
    conf = user_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = prune_cli.run(["schedule=halves", "sparsity=0.8", "train.epochs=2", "finetune.epochs=2",
                            "checkpoint.every_s=0", "measure.latency=false"], tmp_path / "run", config_dir=str(conf))
    assert [r["target"] for r in report["rounds"]] == [0.4, 0.8]
    assert [r["epochs"] for r in report["rounds"]] == [1, 1]
    n = report["sparsity"]["prunable_weights"]
    assert [r["sparsity"] for r in report["rounds"]] == [round(0.4 * n) / n, round(0.8 * n) / n]


def test_an_unknown_key_for_a_users_strategy_is_one_line(tmp_path, monkeypatch):
    conf = user_project(tmp_path)
    result = prune_run(["--config-dir", str(conf), "strategy=mine", "+strategy.colour=red",
                        f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "prune-run: strategy.colour='red': unknown key; strategy=mine takes _target_, granularity, ignore, "
        "layer_sparsity, name, pattern, power, prune_classifier, scope"]


def test_a_users_strategy_keys_are_typed_by_their_defaults(tmp_path):
    conf = user_project(tmp_path)
    result = prune_run(["--config-dir", str(conf), "strategy=mine", "strategy.power=abc",
                        f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["prune-run: strategy.power='abc': must be a finite number"]
