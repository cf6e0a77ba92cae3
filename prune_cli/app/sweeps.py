"""Parallel sweeps that pay on a few cores: Hydra's joblib launcher, each job's config built from a template.

Where a job's time went (the 72-run lenet300 comparison, 2 workers on 2 cores, timed inside the workers):
composing its config 100 ms, restoring Hydra's global state 30 ms, Hydra's job set-up 32 ms and the run's own
work outside its stages 70 ms, against 0.35-1 s of stages; and before any job started, the sweeper composed
every job's config once more, serially, to validate the sweep (72 x 85 ms on one core while both workers
waited). Composition was a third of the sweep.

The jobs of a sweep differ in the values they override (``sparsity=0.9`` against ``0.5``) and in their group
choices (``strategy=l1``). So the config is composed once per *shape*, the group choices plus the keys that
are overridden (and any mapping or list value, which Hydra merges rather than sets), in the launching process (which also validates the sweep: a key or option that does not
exist fails before any job starts, as with Hydra's own sweeper). Each job applies its own values to a copy
with Hydra's own override code and gets its own ``hydra.overrides.task`` and ``override_dirname``; a test
checks the result equals what Hydra composes. Hydra's global state is restored once per worker, not per job.
A job whose overrides are not plain ``key=value`` (``+key``, ``~key``, ``key@package``, ``hydra.*``) is
composed by Hydra in full, as before.
"""
from __future__ import annotations

import copy
import logging
import pickle
import uuid
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def _parse(overrides: Sequence[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    return OverridesParser.create().parse_overrides(list(overrides))


def _shape(parsed, groups: set) -> Optional[tuple]:
    """What a job's config is composed from: its group choices and the keys it sets (not their values); None
    for overrides that only a full composition handles."""
    from hydra.core.override_parser.types import OverrideType
    shape = []
    for override in parsed:
        if (override.is_hydra_override() or override.package is not None or override.type != OverrideType.CHANGE
                or override.is_sweep_override()):
            return None
        key = override.key_or_group
        # Group choices, and mapping or list values (Hydra *merges* a mapping into what is there, so a template
        # holding another job's mapping would leak its keys), are part of the shape; plain values are not.
        keyed = key in groups or "/" in key or isinstance(override.value(), (dict, list))
        shape.append((key, override.input_line if keyed else None))
    return tuple(shape)


def plan_batch(config_loader, master: DictConfig, batch: Sequence[Sequence[str]]) -> tuple[dict, list]:
    """({shape: composed template}, [(shape or None, overrides)] per job). Composes one config per shape (and
    every job no shape covers) here, so a batch that cannot compose fails before any job starts."""
    groups = set(master.hydra.runtime.choices.keys())
    templates, jobs = {}, []
    for overrides in batch:
        overrides = list(overrides)
        shape = _shape(_parse(overrides), groups)
        if shape is None:
            config_loader.load_sweep_config(master_config=master, sweep_overrides=overrides)
        elif shape not in templates:
            templates[shape] = config_loader.load_sweep_config(master_config=master, sweep_overrides=overrides)
        jobs.append((shape, overrides))
    return templates, jobs


def job_config(template: DictConfig, master: DictConfig, overrides: Sequence[str]) -> Optional[DictConfig]:
    """The job's config: ``template`` (composed for another job of the same shape) with this job's values,
    as Hydra's ``load_sweep_config`` would compose it; None when the template chose another option for one of
    the job's groups (then only a full composition is right)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
    parsed = _parse(overrides)
    choices = template.hydra.runtime.choices
    groups = set(choices.keys())
    if any(str(choices[o.key_or_group]) != str(o.value()) for o in parsed if o.key_or_group in groups):
        return None
    cfg = copy.deepcopy(template)
    ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if o.key_or_group not in groups], cfg)
    naming = cfg.hydra.job.config.override_dirname
    with open_dict(cfg.hydra):
        cfg.hydra.overrides.task = [o.input_line for o in parsed]
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=parsed, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
    OmegaConf.copy_cache(from_config=master, to_config=cfg)
    return cfg


# What a worker keeps of the sweep it runs jobs for: {"sweep": id, "shared": (...), "templates": {...}}.
_worker: dict = {"sweep": None}


def execute_job(idx: int, overrides: Sequence[str], template: Optional[bytes], shared: bytes, sweep: str):
    """One job in a worker: Hydra's ``execute_job`` (joblib launcher), with the config built from its template.

    What every job of a sweep shares (Hydra's context and global state, the sweep's config, the task) comes
    pickled once by the launching process (``shared``) and is unpickled, and Hydra's state restored, once per
    worker; so is each template."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    if _worker["sweep"] != sweep:
        _worker.update(sweep=sweep, shared=pickle.loads(shared), templates={})
        setup_globals()
        Singleton.set_state(_worker["shared"][3])
    hydra_context, master, task_function, _ = _worker["shared"]
    if _worker.get("jobs") == 1:
        _freeze()
    _worker["jobs"] = _worker.get("jobs", 0) + 1
    cfg = None
    if template is not None:
        if template not in _worker["templates"]:
            _worker["templates"][template] = pickle.loads(template)
        cfg = job_config(_worker["templates"][template], master, overrides)
    if cfg is None:
        cfg = hydra_context.config_loader.load_sweep_config(master_config=master, sweep_overrides=list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
    HydraConfig.instance().set_config(cfg)
    return run_job(hydra_context=hydra_context, config=cfg, task_function=task_function,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    """Hydra's joblib ``launch``, planned by shape (see the module docstring)."""
    try:  # what loky pickles with: a dependency of joblib >= 1.5, vendored inside it before
        import cloudpickle
    except ImportError:
        from joblib.externals import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed, effective_n_jobs
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    joblib_cfg = launcher.joblib
    joblib_cfg["backend"] = "loky"  # as Hydra's launcher: the threading backend is incompatible with Hydra
    process_joblib_cfg(joblib_cfg)
    # The workers start (and import torch, ~3 s) while this process composes the templates.
    warming = Parallel(**joblib_cfg, return_as="generator_unordered")(
        delayed(_warm_up)() for _ in range(effective_n_jobs(joblib_cfg.get("n_jobs", -1))))
    templates, jobs = plan_batch(launcher.hydra_context.config_loader, config, job_overrides)
    for _ in warming:
        pass
    log.info("Joblib.Parallel(%s) is launching %d jobs (%d configs composed)",
             ",".join(f"{k}={v}" for k, v in joblib_cfg.items()), len(jobs),
             len(templates) + sum(shape is None for shape, _ in jobs))
    log.info("Launching jobs, sweep output dir : %s", config.hydra.sweep.dir)
    for idx, (_, overrides) in enumerate(jobs):
        log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
    shared = cloudpickle.dumps((launcher.hydra_context, config, launcher.task_function, Singleton.get_state()))
    blobs = {shape: pickle.dumps(template) for shape, template in templates.items()}
    sweep = uuid.uuid4().hex
    return Parallel(**joblib_cfg)(
        delayed(execute_job)(initial_job_idx + idx, overrides, blobs.get(shape), shared, sweep)
        for idx, (shape, overrides) in enumerate(jobs))


def _warm_up() -> None:
    """A worker's first task: import what every job imports first (torch with it), then leave those objects
    out of garbage collection. Loky runs a full ``gc.collect()`` in a worker about once a second while its
    memory grows; over torch's objects that took ~150 ms each time, 2 s of every 25 s per worker."""
    import gc
    from prune_cli.pipeline.experiment import Experiment
    del Experiment
    gc.collect()
    gc.freeze()


def _freeze() -> None:
    """Before a worker's second job: what the first imported on the way (Hydra's internals, torch's lazily imported
    modules, the strategy's modules) leaves garbage collection too; the first job's own
    objects are gone by then (collected first, so no garbage is frozen)."""
    import gc
    gc.collect()
    gc.freeze()


def release_workers(launcher) -> None:
    """At the end of a sweep: stop the idle workers now. Left to the interpreter's exit, each tears torch down
    (about a second) while the sweep's process waits for it."""
    if not getattr(launcher, "plans_batches", False):
        return
    from joblib.externals.loky import reusable_executor
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def validate_by_shape(sweeper, batch: Sequence[Sequence[str]]) -> None:
    """The sweeper's check that a batch composes, one composition per shape; skipped when the launcher plans
    the batch itself (it composes the same configs before starting any job)."""
    if getattr(sweeper.launcher, "plans_batches", False):
        return
    plan_batch(sweeper.hydra_context.config_loader, sweeper.config, batch)
