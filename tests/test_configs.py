"""Every YAML option composes, resolves and instantiates (one YAML per option, nothing left to rot)."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prune_cli import config
from prune_cli.validate import validate
from prune_cli.config import compose_config
from prune_cli.config import CONFIG_DIR


def options(group):
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert {"mlp", "lenet300", "lenet5"} <= set(options("model"))
    assert {"digits", "synthetic", "imagefolder", "custom"} <= set(options("dataset"))
    assert set(options("strategy")) == {"magnitude", "random", "gradient", "activation", "apoz", "l1", "l0",
                                        "wanda", "sparsegpt", "compress"}
    assert set(options("schedule")) == {"oneshot", "iterative", "gradual", "lottery"}


@pytest.mark.parametrize("group,option", [(g, o) for g in ("model", "dataset", "strategy", "schedule")
                                          for o in options(g)])
def test_option_composes_and_resolves(group, option):
    cfg = compose_config([f"{group}={option}"])
    OmegaConf.resolve(cfg)
    assert cfg[group].name == option
    validate(cfg)
    if group in ("strategy", "schedule"):
        instance = config.instantiate(cfg[group], group)
        assert instance.name == option
        # Each names a loop the pipeline has (a strategy may leave it to its schedule).
        from prune_cli.pipeline.loops import LOOPS
        assert instance.loop in LOOPS or (group == "strategy" and instance.loop is None)


def test_defaults_are_the_documented_ones():
    cfg = compose_config([])
    assert (cfg.model.name, cfg.dataset.name, cfg.strategy.name, cfg.schedule.name) == \
        ("mlp", "digits", "magnitude", "oneshot")
    assert cfg.sparsity == 0.9 and cfg.device == "auto" and cfg.seed == 0
