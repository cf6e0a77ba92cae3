"""The dense stage: train the dense model, or take it from the cache when an identical one was trained before,
or load the trained weights the user brings (``weights=PATH``; see ``storage/weights.py``).

``dense_key`` is the one definition of "identical" (the run and the dry run both call it): exactly the config
the dense model depends on (model, data, train settings, seed, the rewind epoch a lottery needs kept) and the
device type, since GPU and CPU kernels give different numbers.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from typing import Optional

from omegaconf import DictConfig

from prune_cli.config import plain, without_neutral
from prune_cli.errors import UsageError
from prune_cli.pipeline.stages import TRAIN
from prune_cli.pruning.masks import Masks
from prune_cli.storage.cache import DenseCache, cache_key
from prune_cli.storage.resume import cpu_copy

log = logging.getLogger("prune_cli")

def dense_key(cfg: DictConfig, schedule, device_type: str) -> str:
    dataset = without_neutral(plain(cfg.dataset), "dataset.")  # how data is fetched, not what it is
    if dataset.get("name") == "imagefolder" and dataset.get("root"):  # the files, not only their directory
        from prune_cli.data.own import folder_identity
        dataset["files"] = folder_identity(dataset["root"])
    if cfg.get("weights"):  # loaded weights: the file's content is the dense model, whatever train says
        from prune_cli.storage.weights import file_sha256, weights_path
        return cache_key({"model": plain(cfg.model), "dataset": dataset, "device": device_type,
                          "weights": file_sha256(weights_path(cfg.weights))})
    parts = {"model": plain(cfg.model), "dataset": dataset, "train": plain(cfg.train), "seed": int(cfg.seed),
             "rewind_epoch": int(schedule.rewind_epoch), "device": device_type}
    import prune_cli.distributed as distributed
    if distributed.launched():  # trained across processes: another summation order, other weights
        parts["processes"] = distributed.world_size()
    return cache_key(parts)


def check_weights(cfg: DictConfig, schedule) -> None:
    """What loaded weights cannot give: a point of dense training to rewind to."""
    if cfg.get("weights") and int(schedule.rewind_epoch) > 0:
        raise UsageError(f"schedule.rewind_epoch={schedule.rewind_epoch}: weights={cfg.weights} gives trained "
                         f"weights only, no epoch of their training to rewind to; use schedule.rewind_epoch=0 "
                         f"(rewind to a fresh initialisation)")


def run_cache(cfg: DictConfig, kind: str = "dense", **kwargs) -> DenseCache:
    """The cache a run uses (``cache.dir``, relative to the launch directory)."""
    return DenseCache(str(Path(str(cfg.cache.dir)).expanduser().resolve()), bool(cfg.cache.enabled), kind=kind,
                      **kwargs)


def train_dense(exp) -> Optional[Masks]:
    """The trained dense model, in ``exp.model``; returns the masks the loops start from: those of a loaded
    ``pruned.pt`` (``weights=``), or, on a resumed run, those of the last saved stage."""
    if exp.state.is_done(TRAIN):
        return exp.state.saved_masks(exp.device)  # the loop continues from the saved weights and masks
    if exp.settings.weights:
        return _load(exp)
    if exp.state.in_progress(TRAIN.step):
        exp.restore_saved_weights(exp.model)
    key = dense_key(exp.cfg, exp.schedule, exp.device.type)
    cache = run_cache(exp.cfg)
    import prune_cli.distributed as distributed
    # Across processes rank 0 holds the cache's lock and decides; the others follow its decision (they read a
    # cached entry themselves, never deleting it, and train a missing one with it).
    with contextlib.ExitStack() as held:
        def look_up():  # may wait for the lock while another job trains this dense model
            held.enter_context(cache.locked(key))
            return cache.load(key, check=lambda e: _misfit(exp.model, e))
        entry = distributed.on_main(look_up)
        if distributed.broadcast(entry is not None) and entry is None:
            entry = cache.load(key, check=lambda e: _misfit(exp.model, e), repair=False)
            if entry is None:
                raise RuntimeError(f"rank {distributed.rank()} cannot read the cached dense model rank 0 found")
        if entry is None:
            entry = _train(exp)
            if exp.main:
                cache.store(key, entry)
            source = "computed" if cache.enabled else "computed (cache disabled)"
        else:
            exp.model.load_state_dict(entry["trained"])
            source = "reused"
            log.info("dense model reused from the cache (%s)", cache.path(key).name)
            for item in entry.get("history", []):  # the epochs of the run that trained it
                exp.record.history.append(dict(item, cached=True))
                exp.loggers.log_epoch(exp.record.history[-1])
    exp.record.cache = {"dense": source, "key": key}
    val = entry.get("val_accuracy") if "val_accuracy" in entry else \
        exp.evaluate(precision=exp.settings.train.precision)[1]  # older entries lack it
    exp.record.set_accuracy("dense", entry["accuracy"], val)
    exp.record.timings[str(TRAIN)] = entry["seconds"] if source != "reused" else 0.0
    if exp.schedule.rewind:
        exp.state.kept.rewind = entry["rewind"]
    exp.keep_teacher()
    exp.state.boundary(TRAIN, exp.model, None)
    return None


def _load(exp) -> Optional[Masks]:
    """The dense stage of ``weights=PATH``: load, keep the file's masks (a pruned.pt is pruned further), and
    evaluate. Rewinding schedules go back to a fresh initialisation of the model (seeded as always)."""
    from prune_cli.pruning.masks import prunable_names
    from prune_cli.pruning.sparsity import model_sparsity
    from prune_cli.storage.weights import read_weights
    initial = cpu_copy(exp.model)
    weights = exp.settings.weights
    loaded = read_weights(weights, exp.model, exp.settings.model_name)
    exp.model.load_state_dict(loaded.state_dict)
    masks = None
    if loaded.masks:
        masks = Masks.from_state(loaded.masks, exp.device)
        zeroed = [n for n in exp.ignored if n in masks and bool((masks[n] == 0).any())]
        if zeroed:
            raise UsageError(f"strategy.ignore={exp.strategy.ignore}: {zeroed[0]} is already pruned in "
                             f"weights={weights}, so it cannot be left dense")
        try:
            masks.validate(exp.model)
        except ValueError as err:
            raise UsageError(f"weights={weights}: {err}") from None
        outside = [n for n in prunable_names(exp.model) if n in masks and n not in exp.prunable
                   and bool((masks[n] == 0).any())]
        if outside:  # e.g. a classifier pruned before, excluded now: its zeros stay but are not counted
            log.warning("weights=%s: %s keep the zeros of the file but are not prunable in this run, so the "
                        "report's sparsity does not count them", weights, ", ".join(outside))
        masks.apply_(exp.model)
        _, zeros, total = model_sparsity(exp.model, exp.prunable)
        if zeros > round(exp.settings.sparsity * total):  # the zero count a target means (topk_masks)
            raise UsageError(f"sparsity={exp.settings.sparsity:g}: weights={weights} already has "
                             f"{zeros / total:.6g} of the prunable weights zero, and pruning further only adds "
                             f"zeros; ask for at least that")
    exp.record.cache = {"dense": "loaded", "key": dense_key(exp.cfg, exp.schedule, exp.device.type),
                        "weights": loaded.describe()}
    log.info("dense model loaded from %s (%s, sha256 %s)", loaded.path, loaded.kind, loaded.sha256[:12])
    exp.record.set_accuracy("dense", *exp.evaluate(precision=exp.settings.train.precision))
    exp.record.timings[str(TRAIN)] = 0.0
    if exp.schedule.rewind:
        exp.state.kept.rewind = initial
    exp.keep_teacher()
    exp.state.boundary(TRAIN, exp.model, masks)
    return masks


def _misfit(model, entry: dict) -> str | None:
    """What keeps a cache entry's weights from loading into this model (another shape, a missing tensor)."""
    own = model.state_dict()
    for field in ("trained", "rewind"):
        state = entry.get(field)
        if state is None and field == "rewind":
            continue
        if not isinstance(state, dict) or state.keys() != own.keys():
            return f"its {field} weights do not name this model's tensors"
        for name, tensor in state.items():
            if not hasattr(tensor, "shape") or tuple(tensor.shape) != tuple(own[name].shape):
                return f"its {field} weights give {name} another shape than this model's"
    return None


def _train(exp) -> dict:
    """Train from the initialisation; keeps the weights a rewinding schedule goes back to."""
    rewind_epoch = int(exp.schedule.rewind_epoch)
    kept = exp.state.kept
    if kept.initial is None:  # a resumed dense stage keeps the initial weights its first process saved
        kept.initial = cpu_copy(exp.model)

    def keep_rewind_point(epoch, model):
        if epoch == rewind_epoch:
            kept.rewind_point = cpu_copy(model)

    started = time.perf_counter()
    exp.fit(TRAIN, exp.settings.train, None, each_epoch=keep_rewind_point)
    seconds = time.perf_counter() - started
    rewind = kept.rewind_point if rewind_epoch else kept.initial
    test, val = exp.evaluate(precision=exp.settings.train.precision)
    return {"trained": {k: v.detach().cpu() for k, v in exp.model.state_dict().items()},
            "rewind": rewind, "accuracy": test, "val_accuracy": val, "seconds": seconds,
            "history": [dict(h) for h in exp.record.history if h["stage"] == str(TRAIN)]}
