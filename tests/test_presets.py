"""Experiment presets (conf/experiment/): each composes to what its comment promises, runs end to end for one
tiny step on generated files of the right layout, and shows its plan with +dry_run=true."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import prune_cli
from prune_cli.config import CONFIG_DIR, compose_config
from prune_cli.errors import UsageError

from conftest import check_sparsity, prune_run, strategy_kind
from test_datasets import write_cifar, write_mnist
from test_models import _plain_cpu_kernels  # noqa: F401  (autouse: one thread, PyTorch's own kernels)

EXPECTED = {
    # preset: (model, dataset, strategy, granularity, scope, schedule, sparsity, rounds)
    "han_lenet300": ("lenet300", "mnist", "magnitude", "unstructured", "global", "iterative", 0.918197, 5),
    "lottery_lenet300": ("lenet300", "mnist", "magnitude", "unstructured", "global", "lottery", 0.8648, None),
    "li_vgg16": ("vgg16", "cifar10", "magnitude", "structured", "layer", "oneshot", 0.64, 1),
    "li_resnet56": ("resnet56", "cifar10", "magnitude", "structured", "layer", "oneshot", 0.137, 1),
}
# Small enough for a 2-core CPU: one epoch per stage (one per round), narrower conv nets.
TINY = {
    "han_lenet300": ["schedule.epochs_per_round=1", "finetune.epochs=1"],
    "lottery_lenet300": ["schedule.epochs_per_round=1", "schedule.rounds=3", "finetune.epochs=3"],
    "li_vgg16": ["+model.width=0.0625", "train.batch_size=32", "finetune.batch_size=32", "finetune.epochs=1"],
    "li_resnet56": ["+model.width=0.25", "train.batch_size=32", "finetune.batch_size=32", "finetune.epochs=1"],
}


def test_every_preset_is_tested():
    assert {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_composes_as_documented(name):
    text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_") and "Compare with" in text and "prune-run +experiment=" in text
    cfg = compose_config([f"+experiment={name}"])
    model, dataset, strategy, granularity, scope, schedule, sparsity, rounds = EXPECTED[name]
    assert cfg.model.name == model and cfg.dataset.name == dataset and cfg.schedule.name == schedule
    assert cfg.strategy.name == strategy and cfg.strategy.granularity == granularity
    assert cfg.strategy.scope == scope and cfg.sparsity == pytest.approx(sparsity)
    assert cfg.schedule.get("rounds", 1) == rounds
    reference = OmegaConf.to_container(cfg.reference)
    assert reference["source"].split()[0] in text and len(reference) >= 3
    # The published numbers are fractions, like report.json's.
    assert all(0 < v < 1 for k, v in reference.items() if k != "source")


HIDDEN, OUTPUT = ("layers.1.weight", "layers.3.weight"), "layers.5.weight"


def _lottery(cfg):
    """The preset's lottery schedule, fitted to LeNet-300-100's weights."""
    from prune_cli.pruning.schedules import Lottery
    schedule = Lottery(**{k: v for k, v in OmegaConf.to_container(cfg.schedule).items() if k not in ("_target_", "name")})
    schedule.fit("lenet300", {HIDDEN[0]: (300, 784), HIDDEN[1]: (100, 300), OUTPUT: (10, 100)}, OUTPUT, False)
    return schedule


def test_preset_details_match_the_papers():
    lottery = compose_config(["+experiment=lottery_lenet300"])
    assert (lottery.train.optimizer, lottery.train.lr, lottery.train.batch_size) == ("adam", 1.2e-3, 60)
    assert lottery.schedule.rewind_epoch == 0 and not lottery.schedule.reinit
    # The paper's protocol: 9 rounds; round i leaves each hidden layer 0.8^i of its weights, the output 0.9^i.
    schedule = _lottery(lottery)
    targets = schedule.targets(lottery.sparsity)
    assert len(targets) == 9 and targets[-1] == lottery.sparsity
    for i, target in enumerate(targets[:-1], start=1):
        assert schedule.layer_rates(target, None, None) == pytest.approx(
            {HIDDEN[0]: 1 - 0.8 ** i, HIDDEN[1]: 1 - 0.8 ** i, OUTPUT: 1 - 0.9 ** i}, abs=1e-12)
    han = compose_config(["+experiment=han_lenet300"])
    assert han.finetune.lr == pytest.approx(han.train.lr / 10)  # retrain at 1/10 of the original lr


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, train=120, test=40)
    write_cifar(root, per_batch=12, test=20)
    return root


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_runs_one_tiny_step(name, generated, tmp_path):
    """The preset itself (its model, strategy, schedule, optimisers) on generated files of its dataset."""
    overrides = [f"+experiment={name}", f"dataset.root={generated}", "dataset.download=false",
                 "train.epochs=1", "checkpoint.every_s=0", "measure.latency=false", *TINY[name]]
    report = prune_cli.run(overrides, tmp_path / name)
    assert report["status"] == "completed"
    assert report["experiment"]["model"] == EXPECTED[name][0]
    assert report["experiment"]["dataset"] == EXPECTED[name][1]
    target = float(compose_config(overrides).sparsity)
    assert report["sparsity"]["target"] == pytest.approx(target)
    assert strategy_kind(overrides) == EXPECTED[name][3]
    check_sparsity(report, tmp_path / name, overrides)
    layers = {layer["name"]: layer["sparsity"] for layer in report["layers"]}
    if name == "han_lenet300":  # Han et al.'s per-layer rates, exactly: fc1 keeps 8%, fc2 9%, fc3 26%
        assert layers == {"layers.1.weight": round(0.92 * 235200) / 235200,
                          "layers.3.weight": round(0.91 * 30000) / 30000, "layers.5.weight": 0.74}
    if name == "lottery_lenet300":  # each layer at its own rate: hidden 1 - 0.8^9, output 1 - 0.9^9 (to a weight)
        expected = _lottery(compose_config(overrides)).layer_rates(target, None, None)
        assert expected[OUTPUT] == pytest.approx(1 - 0.9 ** 9, abs=1e-4)
        sizes = {HIDDEN[0]: 235200, HIDDEN[1]: 30000, OUTPUT: 1000}
        assert all(abs(layers[n] - expected[n]) * sizes[n] <= 1 for n in sizes)
    if EXPECTED[name][3] == "structured":
        assert report["shrunk"]["matches_masked"]  # the physically smaller model computes the same


def test_plan_of_a_preset_on_generated_files(generated, capsys):
    from prune_cli.app.dry_run import print_plan
    cfg = compose_config(["+experiment=han_lenet300", f"dataset.root={generated}", "dataset.download=false"])
    plan = print_plan(cfg)
    assert plan["dataset"]["missing"] is None
    assert (plan["dataset"]["train"], plan["dataset"]["test"]) == (120, 40)
    assert plan["model"]["params"] == 266_610 and plan["model"]["macs"] == 266_200
    targets = [r["target"] for r in plan["loop"]["rounds"]]
    assert len(targets) == 5 and targets[-1] == 0.918197 and targets == sorted(targets)
    assert sum(r["finetune_epochs"] for r in plan["loop"]["rounds"]) == 30
    out = capsys.readouterr().out
    assert "prune-run plan" in out and "Han et al. 2015" in out and "266,610" in out


def test_plan_with_missing_files_says_so_and_still_counts(tmp_path):
    from prune_cli.app.dry_run import make_plan
    plan = make_plan(compose_config(["+experiment=li_resnet56", f"dataset.root={tmp_path}"]))
    assert "dataset=cifar10: files not found under" in plan["dataset"]["missing"]
    assert (plan["dataset"]["train"], plan["dataset"]["test"]) == (50000, 10000)
    assert round(plan["model"]["macs"] / 1e6) == 126          # Li et al. 2017: 1.25e8 FLOPs
    assert not any(tmp_path.iterdir())                        # no download, nothing written


def test_plan_rejects_bad_input_like_a_run():
    from prune_cli.app.dry_run import make_plan
    with pytest.raises(UsageError, match="sparsity=1.5"):
        make_plan(compose_config(["+experiment=li_vgg16", "sparsity=1.5"]))


def test_dry_run_in_a_subprocess(tmp_path):
    result = prune_run(["+experiment=li_vgg16", "+dry_run=true", f"dataset.root={tmp_path / 'none'}",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "313,463,808 MACs" in out and "would stop here" in out and "Li et al. 2017" in out
    assert not (tmp_path / "run").exists()  # a dry run leaves no directory behind
