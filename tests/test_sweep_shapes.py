"""prune_cli/app/sweeps.py: a sweep's job configs built from one composition per shape are the configs Hydra
composes for each job, and what cannot be built that way is composed by Hydra."""
import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from prune_cli.app.sweeps import _parse, _shape, job_config, plan_batch
from prune_cli.config import CONFIG_DIR

FIXED = ["model=lenet300", "progress=false", "hydra/launcher=joblib"]


@pytest.fixture(scope="module")
def loader_and_master():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=FIXED, run_mode=RunMode.MULTIRUN)
        yield loader, master


def _jobs():
    return [[*FIXED[:2], f"strategy={s}", f"sparsity={p}", f"seed={seed}", f"finetune.lr={lr}"]
            for s in ("magnitude", "l1") for p in (0.5, 0.9) for seed in (0, 3) for lr in (1e-3, 0.01)]


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=False)


def test_jobs_built_from_templates_equal_hydras_own_composition(loader_and_master):
    loader, master = loader_and_master
    jobs = _jobs()
    templates, planned = plan_batch(loader, master, jobs)
    assert len(templates) == 2  # one per strategy: the other overrides only change values
    for (shape, overrides) in planned:
        built = job_config(templates[shape], master, overrides)
        composed = loader.load_sweep_config(master_config=master, sweep_overrides=overrides)
        assert _plain(built) == _plain(composed), overrides
        assert built.hydra.job.override_dirname == composed.hydra.job.override_dirname
        assert OmegaConf.is_readonly(built.hydra) == OmegaConf.is_readonly(composed.hydra)
        assert OmegaConf.is_struct(built) and OmegaConf.is_struct(composed)


@pytest.mark.parametrize("override", ["+extra=1", "~weights", "++sparsity=0.5", "model@foo=lenet5",
                                      "hydra.job.name=x"])
def test_overrides_a_template_cannot_reproduce_are_left_to_hydra(loader_and_master, override):
    _, master = loader_and_master
    groups = set(master.hydra.runtime.choices.keys())
    assert _shape(_parse(["strategy=magnitude", override]), groups) is None
    assert _shape(_parse(["strategy=magnitude", "sparsity=0.5"]), groups) == (
        ("strategy", "strategy=magnitude"), ("sparsity", None))


def test_a_key_that_does_not_exist_fails_while_planning(loader_and_master):
    loader, master = loader_and_master
    with pytest.raises(Exception, match="sparsty"):
        plan_batch(loader, master, [["sparsty=0.5"]])


def test_mapping_and_list_values_get_their_own_template(loader_and_master):
    """Hydra merges a mapping override into what is there: built on a template holding another job's mapping,
    the job would get both mappings' keys."""
    loader, master = loader_and_master
    jobs = [[*FIXED[:2], "strategy=magnitude", f"strategy.layer_sparsity={m}", f"model.hidden={h}", "seed=1"]
            for m in ("{layers.1.weight:0.5}", "{layers.3.weight:0.8}") for h in ("[300,100]", "[64]")]
    templates, planned = plan_batch(loader, master, jobs)
    assert len(templates) == 4
    for shape, overrides in planned:
        built = job_config(templates[shape], master, overrides)
        assert _plain(built) == _plain(loader.load_sweep_config(master_config=master, sweep_overrides=overrides))
    assert len(built.strategy.layer_sparsity) == 1


def test_a_template_that_chose_another_option_is_not_used(loader_and_master):
    loader, master = loader_and_master
    templates, planned = plan_batch(loader, master, [[*FIXED[:2], "strategy=l1"]])
    (shape, _), = planned
    assert job_config(templates[shape], master, [*FIXED[:2], "strategy=magnitude"]) is None
