"""The experiment, top to bottom: train (dense) -> score -> prune -> fine-tune -> evaluate.

Score/prune/fine-tune repeat once per schedule round. Every stage boundary is saved (resume.py), the dense
stage is shared through the cache (cache.py), and the report is written last, after the checkpoint.
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import checks, report as reporting
from .cache import DenseCache, dense_key
from .checkpoint import save_checkpoint
from .data import load_dataset
from .errors import UsageError
from .masks import Masks, prunable_names, topk_masks, weight_sparsity
from .models import build, build_for, make_spec
from .resume import RunState
from .strategies import ScoringContext
from .strategies.compress import Compress, find_width
from .training import StageSettings, Timer, evaluate, fit

log = logging.getLogger("prune_cli")
SMALL_MODEL_MACS = 5_000_000  # per example; LeNets and MLPs on digits/MNIST are far below, CIFAR CNNs above


def stage_seed(seed: int, stage: str) -> int:
    """Each stage draws its shuffles from its own seed, so resuming one stage does not shift another."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % (2 ** 31)


class Experiment:
    """One run. Holds what the stages share; each stage is a method, called in order by ``run``."""

    def __init__(self, cfg: DictConfig, run_dir: Path, progress=None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        checks.validate(cfg)
        self.device = checks.resolve_device(cfg.device)
        self.strategy = checks.instantiate(cfg.strategy, "strategy")
        self.schedule = checks.instantiate(cfg.schedule, "schedule")
        checks.validate_plan(cfg, self.strategy, self.schedule)
        self.seed = int(cfg.seed)
        self.data = load_dataset(cfg.dataset).to(self.device)
        torch.manual_seed(self.seed)
        self.model, self.spec = build_for(OmegaConf.to_container(cfg.model, resolve=True), self.data.info)
        self.model.to(self.device)
        self.threads = self._set_threads(cfg.get("threads", "auto"))
        self.prunable = prunable_names(self.model, include_classifier=self.strategy.prune_classifier)
        self.example = torch.zeros(1, *self.data.info.input_shape, device=self.device)
        self.unit_layers = []
        if self.strategy.structured:
            from .structure import unit_layers
            self.unit_layers = unit_layers(self.model, self.example)
            from .structure import check_reachable
            check_reachable(self.model, self.example, self.prunable, float(cfg.sparsity), self.strategy.name,
                            cfg.model.get("name", "?"), layers=self.unit_layers)
        self.state = RunState(self.run_dir, checks.fingerprint(cfg), cfg.checkpoint.every_s).load()
        if isinstance(self.strategy, Compress) and "dense" in self.state.extra:
            # The saved model is the narrow one; the teacher comes back from its own copy.
            self.model.load_state_dict(self.state.extra["dense"])
            self.masks: Optional[Masks] = None
        else:
            self.masks = self.state.restore_into(self.model, self.device)
        self.record = self.state.record
        self.record.setdefault("timings", {})
        self.record.setdefault("rounds", [])
        self.record.setdefault("accuracy", {"dense": None, "pruned": None, "finetuned": None})

    def _set_threads(self, wanted) -> int:
        """On CPU, small models train several times faster on one thread: their kernels are too short to
        split, and a second thread spin-waits (badly so when another process shares the cores)."""
        if self.device.type != "cpu":
            return torch.get_num_threads()
        if wanted == "auto":
            from .costs import count_flops
            small = count_flops(self.model, tuple(self.data.info.input_shape))["dense"] < SMALL_MODEL_MACS
            wanted = 1 if small else (os.cpu_count() or 1)
        torch.set_num_threads(int(wanted))
        return int(wanted)

    # --- helpers shared by the stages -------------------------------------------------------------------
    def _time(self, key: str, seconds: float) -> None:
        self.record["timings"][key] = self.record["timings"].get(key, 0.0) + seconds

    def _evaluate(self, model=None) -> float:
        with Timer(self.device) as t:
            acc = evaluate(model or self.model, self.data.test, int(self.cfg.eval_batch_size))
        self._time("evaluate", t.seconds)
        return acc

    def _fit(self, stage: str, settings: StageSettings, model=None, each_epoch=None, **kwargs) -> Optional[Masks]:
        """fit() with resume: starts at the saved epoch of this stage, saves progress at epoch ends."""
        model = model or self.model
        start, optimizer_state = self.state.start_of(stage)
        masks = kwargs.pop("masks", self.masks)

        def on_epoch_end(epoch, optimizer, current_masks):
            if each_epoch is not None:
                each_epoch(epoch, model)
            self.state.epoch_end(stage, epoch, model, optimizer, current_masks)

        with Timer(self.device) as t:
            masks = fit(model, self.data.train, settings, stage=stage, seed=stage_seed(self.seed, stage),
                        masks=masks, start_epoch=start, optimizer_state=optimizer_state,
                        on_epoch_end=on_epoch_end, progress=self.progress, **kwargs)
        self._time(stage.split(".")[-1], t.seconds)  # round2.finetune -> finetune, round1.l1 -> l1
        return masks

    def _context(self, round_index: int, target: float, previous_target: float = 0.0) -> ScoringContext:
        finetune = StageSettings.from_cfg(self.cfg.finetune)

        def train_for(epochs: int, stage: str, **kwargs):
            settings = StageSettings.from_cfg(self.cfg.finetune, epochs=epochs)
            new_masks = self._fit(stage, settings, **kwargs)
            if new_masks is not None and kwargs.get("after_step") is not None:
                self.masks = new_masks if self.masks is None else self.masks.intersect(new_masks)

        masks = self.masks if self.masks is not None else Masks.ones(self.model, self.prunable)
        return ScoringContext(model=self.model, masks=masks, train=self.data.train, prunable=self.prunable,
                              device=self.device, seed=self.seed, round=round_index,
                              batch_size=finetune.batch_size, target=target, previous_target=previous_target,
                              fit=train_for,
                              unit_layers=self.unit_layers)

    def _score(self, ctx: ScoringContext) -> dict:
        """Scores of the first prune of a dense model do not depend on the sparsity: a sweep over sparsities
        computes them once (cached beside the dense model). Later rounds score a model no other run has."""
        from .strategies.base import Strategy
        # Gradual pruning scores a model already fine-tuned for some steps: never shared.
        reusable = (self.masks is None and ctx.round == 1 and type(self.strategy).prepare is Strategy.prepare
                    and not self.schedule.prunes_while_training
                    and self.record.get("cache", {}).get("key") and self.cfg.cache.enabled)
        if not reusable:
            return self.strategy.score(ctx)
        params = {k: v for k, v in OmegaConf.to_container(self.cfg.strategy, resolve=True).items()}
        key = dense_key({"dense": self.record["cache"]["key"], "strategy": params, "seed": self.seed,
                         "prunable": self.prunable, "batch_size": ctx.batch_size})  # what ScoringContext reads
        cache = DenseCache(str(Path(self.cfg.cache.dir).expanduser().resolve()), True, kind="scores",
                           required=("scores",))
        with cache.locked(key):
            entry = cache.load(key)
            if entry is None:
                scores = self.strategy.score(ctx)
                cache.store(key, {"scores": {k: v.detach().cpu() for k, v in scores.items()}})
                self.record["cache"]["scores"] = "computed"
                return scores
        self.record["cache"]["scores"] = "reused"
        return {k: v.to(self.device) for k, v in entry["scores"].items()}

    def _prune_to(self, target: float, ctx: ScoringContext) -> Masks:
        """Score, then turn scores into masks at exactly ``target`` (shared thresholding)."""
        with Timer(self.device) as t:
            scores = self._score(ctx)
        self._time("score", t.seconds)
        with Timer(self.device) as t:
            if self.strategy.structured:
                from .structure import select_units, unit_masks
                removed = select_units(scores, target, self.model, self.example, scope=self.strategy.scope,
                                       existing_masks=self.masks, prunable=self.prunable,
                                       layers=self.unit_layers)
                masks = Masks(unit_masks(self.model, self.example, removed, layers=self.unit_layers))
            else:
                masks = topk_masks(scores, target, self.strategy.scope, previous=self.masks)
            masks = masks.to(self.device)
            if self.masks is not None:
                masks = self.masks.intersect(masks)
            masks.validate(self.model)
            masks.apply_(self.model)
        self._time("prune", t.seconds)
        return masks

    def _achieved(self) -> float:
        return weight_sparsity(self.model, self.prunable)[0]

    # --- stages --------------------------------------------------------------------------------------------
    def train_dense(self) -> None:
        """Train the dense model, or take it from the cache when an identical one was trained before."""
        if self.state.is_done("train"):
            return
        cfg = self.cfg
        rewind_epoch = getattr(self.schedule, "rewind_epoch", 0)
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        for knob in ("download", "workers", "in_memory"):  # how data is fetched, not what it is
            dataset.pop(knob, None)
        key = dense_key({"model": OmegaConf.to_container(cfg.model, resolve=True), "dataset": dataset,
                         "train": OmegaConf.to_container(cfg.train, resolve=True),
                         "seed": self.seed, "rewind_epoch": rewind_epoch,
                         "device": self.device.type})  # GPU and CPU kernels give different numbers
        cache = DenseCache(str(Path(cfg.cache.dir).expanduser().resolve()), cfg.cache.enabled)
        with cache.locked(key):
            entry = cache.load(key)
            if entry is None:
                entry = self._train_dense_now(rewind_epoch)
                cache.store(key, entry)
                source = "computed" if cache.enabled else "computed (cache disabled)"
            else:
                self.model.load_state_dict(entry["trained"])
                source = "reused"
                log.info("dense model reused from the cache (%s)", cache.path(key).name)
        self.record["cache"] = {"dense": source, "key": key}
        self.record["accuracy"]["dense"] = entry["accuracy"]
        self.record["timings"]["train"] = entry["seconds"] if source != "reused" else 0.0
        if self.schedule.rewind:
            self.state.extra["rewind"] = entry["rewind"]
        if isinstance(self.strategy, Compress):
            self.state.extra["dense"] = entry["trained"]
        self.state.boundary("train", self.model, self.masks)

    def _train_dense_now(self, rewind_epoch: int) -> dict:
        initial = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.state.extra.setdefault("initial", initial)

        def keep_rewind_point(epoch, model):
            if epoch == rewind_epoch:
                self.state.extra["rewind_point"] = {k: v.detach().cpu().clone()
                                                    for k, v in model.state_dict().items()}

        started = time.perf_counter()
        self._fit("train", StageSettings.from_cfg(self.cfg.train), masks=None, each_epoch=keep_rewind_point)
        seconds = time.perf_counter() - started
        rewind = self.state.extra.get("rewind_point") if rewind_epoch else self.state.extra["initial"]
        return {"trained": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "rewind": rewind, "accuracy": self._evaluate(), "seconds": seconds}

    def prune_in_rounds(self) -> None:
        targets = self.schedule.targets(float(self.cfg.sparsity))
        epochs = self.schedule.epochs_per_round(int(self.cfg.finetune.epochs), len(targets))
        for index, (target, round_epochs) in enumerate(zip(targets, epochs), start=1):
            name = f"round{index}"
            if not self.state.is_done(f"{name}.prune"):
                started = time.perf_counter()
                previous = targets[index - 2] if index > 1 else 0.0
                ctx = self._context(index, target, previous)
                if not self.state.is_done(f"{name}.prepare"):
                    self.strategy.prepare(ctx)
                    self.state.boundary(f"{name}.prepare", self.model, self.masks)
                ctx = self._context(index, target)
                self.masks = self._prune_to(target, ctx)
                accuracy_pruned = self._evaluate()
                if self.schedule.rewind:
                    self._rewind(index)
                self.record["rounds"].append({"round": index, "target": target, "sparsity": self._achieved(),
                                              "accuracy_pruned": accuracy_pruned, "accuracy": None,
                                              "epochs": round_epochs,
                                              "seconds": time.perf_counter() - started})
                if index == 1:
                    self.record["accuracy"]["pruned"] = accuracy_pruned
                self.state.boundary(f"{name}.prune", self.model, self.masks)
            if not self.state.is_done(f"{name}.finetune"):
                started = time.perf_counter()
                if round_epochs > 0:
                    self._fit(f"{name}.finetune", StageSettings.from_cfg(self.cfg.finetune, epochs=round_epochs))
                entry = self.record["rounds"][index - 1]
                entry["accuracy"] = self._evaluate()
                entry["sparsity"] = self._achieved()
                entry["seconds"] += time.perf_counter() - started
                self.state.boundary(f"{name}.finetune", self.model, self.masks)
        self.record["accuracy"]["finetuned"] = self.record["rounds"][-1]["accuracy"]
        # One-shot: "pruned" is the accuracy right after pruning. With several rounds it is that of the last
        # prune, before its fine-tuning, which is what a reader comparing schedules wants.
        self.record["accuracy"]["pruned"] = self.record["rounds"][-1]["accuracy_pruned"]

    def _rewind(self, index: int) -> None:
        """Lottery tickets: surviving weights back to their initial (or rewind-epoch) values, or fresh ones."""
        if self.schedule.reinit:
            torch.manual_seed(stage_seed(self.seed, f"reinit{index}"))
            fresh = build(self.spec).to(self.device)
            self.model.load_state_dict(fresh.state_dict())
        else:
            self.model.load_state_dict(self.state.extra["rewind"])
        self.masks.apply_(self.model)

    def prune_gradually(self) -> None:
        """Zhu & Gupta: prune inside fine-tuning at the scheduled steps, then fine-tune at the final mask."""
        name = "gradual"
        if self.state.is_done(f"{name}.finetune"):
            return
        settings = StageSettings.from_cfg(self.cfg.finetune)
        total_steps = settings.epochs * self.data.train.num_batches(settings.batch_size)
        final = float(self.cfg.sparsity)
        prune_at = set(self.schedule.pruning_steps(total_steps))
        rounds = self.record["rounds"]
        if not self.state.is_done(f"{name}.prepare") and self.state.start_of(f"{name}.finetune")[0] == 0:
            # Sparsity-constrained training (l1, l0) runs once, before the gradual fine-tuning.
            self.strategy.prepare(self._context(0, final))
            self.state.boundary(f"{name}.prepare", self.model, self.masks)

        def after_step(step: int):
            if step not in prune_at:
                return None
            started = time.perf_counter()
            if rounds:
                rounds[-1]["accuracy"] = self._evaluate()
            target = self.schedule.sparsity_at(step, final, total_steps)
            index = len(rounds) + 1
            masks = self._prune_to(target, self._context(index, target))
            self.masks = masks
            rounds.append({"round": index, "step": step, "target": target, "sparsity": self._achieved(),
                           "accuracy_pruned": self._evaluate(), "accuracy": None,
                           "seconds": time.perf_counter() - started})
            return masks

        self._fit(f"{name}.finetune", settings, after_step=after_step)
        rounds[-1]["accuracy"] = self._evaluate()
        self.record["accuracy"]["pruned"] = rounds[-1]["accuracy_pruned"]
        self.record["accuracy"]["finetuned"] = rounds[-1]["accuracy"]
        self.state.boundary(f"{name}.finetune", self.model, self.masks)

    def compress(self) -> None:
        """Train a narrower model with (1 - sparsity) of the dense prunable weights, optionally distilled."""
        dense_model = self.model
        dense_count = weight_sparsity(dense_model, self.prunable)[2]
        model_cfg = OmegaConf.to_container(self.cfg.model, resolve=True)
        info = self.data.info

        def count(width: float) -> int:
            candidate = build(make_spec(model_cfg, info, width))
            return weight_sparsity(candidate, prunable_names(candidate, self.strategy.prune_classifier))[2]

        width = self.state.extra.get("width")
        if width is None:
            try:
                width = find_width(count, 1.0 - float(self.cfg.sparsity))
            except ValueError as err:
                raise UsageError(f"sparsity={self.cfg.sparsity}: strategy=compress cannot reach it: {err}") from None
            self.state.extra["width"] = width
        torch.manual_seed(stage_seed(self.seed, "compress"))
        small, spec = build_for(model_cfg, info, width=width)
        small.to(self.device)
        if self.state.is_done("compress") or self.state.start_of("compress")[0] > 0:
            small.load_state_dict(self.state.model_state)
        if not self.state.is_done("compress"):
            epochs = int(self.cfg.train.epochs) + int(self.cfg.finetune.epochs)
            settings = StageSettings.from_cfg(self.cfg.train, epochs=epochs)
            loss_fn = self.strategy.loss_fn(dense_model)
            extra = {"loss_fn": loss_fn} if loss_fn is not None else {}
            self._fit("compress", settings, model=small, masks=None, **extra)
        self.model, self.spec, self.masks = small, spec, None
        self.prunable = prunable_names(small, self.strategy.prune_classifier)
        accuracy = self._evaluate()
        self.record["accuracy"]["finetuned"] = accuracy
        self.record["compress"] = {"width": width, "dense_prunable_weights": dense_count,
                                   "prunable_weights": weight_sparsity(small, self.prunable)[2]}
        self.record["rounds"] = [{"round": 1, "target": float(self.cfg.sparsity),
                                  "sparsity": 1.0 - self.record["compress"]["prunable_weights"] / dense_count,
                                  "accuracy_pruned": None, "accuracy": accuracy}]
        if not self.state.is_done("compress"):
            self.state.boundary("compress", small, None)

    # --- the whole run ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        finished = reporting.completed_report(self.run_dir)
        if finished is not None:
            if finished.get("fingerprint") != self.state.fingerprint:
                raise UsageError(f"hydra.run.dir={self.run_dir}: holds a completed run with a different "
                                 f"config; choose another directory (nothing was changed)")
            log.info("this run is already complete in %s; nothing to do", self.run_dir)
            return finished
        started = time.perf_counter()
        if self.state.resumed_from:
            log.info("resuming from %s", self.state.resumed_from)
            self.record["resumed_from"] = self.state.resumed_from
        self.train_dense()
        if isinstance(self.strategy, Compress):
            self.compress()
        elif self.schedule.prunes_while_training:
            self.prune_gradually()
        else:
            self.prune_in_rounds()
        self._time("total", time.perf_counter() - started)
        return self.finish()

    def finish(self) -> dict:
        """Measure, save the checkpoint, then write the report (last, so 'completed' means complete)."""
        extras = reporting.measure(self)
        state_dict = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        config = OmegaConf.to_container(self.cfg, resolve=True)
        result = reporting.build_report(self, state_dict, extras)
        checkpoint_path = self.run_dir / "pruned.pt"
        save_checkpoint(checkpoint_path, state_dict=state_dict,
                        masks=self.masks.cpu_state() if self.masks else {}, spec=self.spec, config=config,
                        report=result, shrunk=extras.get("shrunk_payload"))
        result["size_bytes"]["checkpoint"] = checkpoint_path.stat().st_size
        reporting.write(self.run_dir, result)
        self.state.remove()
        return result
