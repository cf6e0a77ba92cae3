"""The experiment, top to bottom: train (dense) -> the schedule's loop (score -> prune -> fine-tune per round)
-> finish (measure, checkpoint, report).

``Experiment`` wires one run together and offers the loops the steps they share (``fit`` with resume,
``evaluate``, ``prune_to``, ``context``); each loop lives in its own file and is chosen by the schedule, or by
a strategy that replaces pruning (``loops.py``). Nothing here looks at which strategy or schedule it runs.

Stages hand on their results explicitly: the dense stage returns the masks a loaded ``pruned.pt`` brings, each
loop takes the masks it starts from and returns an ``Outcome`` (the final model, its spec, masks and prunable
weights), and ``finish`` measures that outcome. The steps take the masks they work with as arguments; the
experiment's own fields (data, model, strategy, ...) are set once, here, and not reassigned by the loops.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig

from prune_cli.config import fingerprint, instantiate, plain, resolve_device
from prune_cli.errors import UsageError
from prune_cli.data import load_dataset
from prune_cli.measure.timing import Timer
from prune_cli.models import build_for
from prune_cli.pipeline import dense
from prune_cli.pipeline.facts import DataFacts
from prune_cli.pipeline.finish import finish
from prune_cli.pipeline.loops import loop_for
from prune_cli.pipeline.memory import bound_gpu_memory, check_data_fits, check_model_fits
from prune_cli.pipeline.outcome import Outcome
from prune_cli.pipeline.prunable import prunable_of
from prune_cli.pipeline.record import RunRecord
from prune_cli.pipeline.scores import first_round_scores
from prune_cli.pipeline.settings import RunSettings
from prune_cli.pipeline.stages import TRAIN, Stage
from prune_cli.pruning.masks import Masks, topk_masks
from prune_cli.pruning.sparsity import model_sparsity, zero_count
from prune_cli.pruning.strategies.base import ScoringContext
from prune_cli.storage.resume import RunState, cpu_copy
from prune_cli.storage.run_dir import check_opening, completed_report, lock, refuse_other_config, remove_leftovers
from prune_cli.training.evaluate import evaluate
from prune_cli.training.loop import fit, stage_seed
from prune_cli.training.settings import StageSettings
from prune_cli.validate import validate

log = logging.getLogger("prune_cli")
SMALL_MODEL_MACS = 5_000_000  # per example; LeNets and MLPs on digits/MNIST are far below, CIFAR CNNs above
DISTILLED = ("finetune", "control")  # phases finetune.distill applies to: fine-tuning, and the lottery control


DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice for this process, before any run changes it
_macs: dict = {}


def _dense_macs(spec: dict, model, input_shape: tuple) -> int:
    """Multiply-adds of the freshly built dense model, counted once per architecture in a process."""
    import json
    key = (json.dumps(spec, sort_keys=True, default=str), input_shape)
    if key not in _macs:
        from prune_cli.measure.flops import count_flops
        with torch.random.fork_rng(devices=[]):  # its example input would shift the run's random stream
            _macs[key] = count_flops(model, input_shape)["dense"]
    return _macs[key]


def _fits(optimizer_state: dict, model) -> bool:
    """Whether a saved optimizer state's per-parameter tensors have the shapes of ``model``'s parameters."""
    params = list(model.parameters())
    for index, entry in optimizer_state.get("state", {}).items():
        if int(index) >= len(params):
            return False
        for value in entry.values():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != params[int(index)].shape:
                return False
    return True


class _NotHeld:
    """The run directory's lock as a rank other than 0 has it: rank 0 holds the real one."""

    def release(self) -> None:
        pass


class Experiment:
    """One run: what its stages share, and the steps every loop uses."""

    def __init__(self, cfg: DictConfig, run_dir: Path, progress=None, keep_round_masks: bool = False,
                 overrides: Sequence[str] = ()):
        """``keep_round_masks``: the record keeps every round's masks in memory (for inspection; a gradual
        run prunes hundreds of times, so it is off by default). ``overrides``: the command's, for the report's
        ``environment.command``."""
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.overrides = list(overrides)
        self.keep_round_masks = keep_round_masks
        validate(cfg)
        import prune_cli.distributed as distributed
        self.main = distributed.is_main()  # across processes (torchrun) only rank 0 writes and prints
        device = resolve_device(cfg.device)
        distributed.check(cfg, device)  # as the guard did, for a run started without it (the API)
        self.device = distributed.device_for(device)
        # Before anything is allocated there: jobs sharing one GPU each hold at most their share.
        self.gpu_memory_fraction = bound_gpu_memory(cfg.get("gpu_memory_fraction", "auto"), self.device)
        self.strategy = instantiate(cfg.strategy, "strategy")
        self.schedule = instantiate(cfg.schedule, "schedule")
        self.schedule.check_budget(int(cfg.train.epochs), int(cfg.finetune.epochs))
        dense.check_weights(cfg, self.schedule)
        self.loop = loop_for(self.strategy, self.schedule)
        self.fingerprint = fingerprint(cfg)
        from prune_cli.loggers import files as logger_files
        check_opening(self.run_dir, also=logger_files(plain(cfg.get("logger"))))
        refuse_other_config(self.run_dir, self.fingerprint)  # before state.pt is read
        self.settings = RunSettings.from_cfg(cfg)  # what the stages read, typed, from here on
        self.seed = self.settings.seed
        check_data_fits(cfg.dataset)  # sizes no machine has are refused before they are allocated
        self.data = load_dataset(cfg.dataset).to(self.device)
        self.facts = DataFacts.of(self.data)
        check_model_fits(self.settings.model, self.data.info, self.device)
        torch.manual_seed(self.seed)
        self.model, self.spec = build_for(self.settings.model, self.data.info)
        self.model.to(self.device)
        self.threads = self._set_threads(cfg.get("threads", "auto"))
        wanted = str(cfg.get("matmul_precision", "auto"))
        # TF32 on a GPU is torch's documented trade for fp32 training (ten mantissa bits in matrix products);
        # process-wide, so prune_cli.run puts the caller's setting back (app/api.py).
        torch.set_float32_matmul_precision(("high" if self.device.type == "cuda" else "highest")
                                           if wanted == "auto" else wanted)
        self.example = torch.zeros(1, *self.data.info.input_shape, device=self.device)
        allowed = prunable_of(self.model, self.example, self.strategy, self.schedule, self.settings.sparsity,
                              self.settings.model_name)
        self.prunable, self.ignored, self.unit_layers = allowed.names, allowed.ignored, allowed.unit_layers
        self.loop.plan(self.settings, self.strategy, self.schedule, self.facts)  # its refusals come before any work
        # Every check has passed: only now is the directory made, and held for this run alone (by rank 0; the
        # others read the resume state once it has tidied the directory).
        held = distributed.on_main(self._hold_run_dir)
        self.lock = held if self.main else _NotHeld()
        try:
            self.state = RunState(self.run_dir, self.fingerprint, cfg.checkpoint.every_s, writes=self.main).load()
            self.state.restore_rng()
            self.record = RunRecord.from_state(self.state.record) if self.state.record else self._new_record()
            self.state.snapshot = self.record.to_state
            from prune_cli.loggers import Loggers
            self.loggers = Loggers(self.run_dir, (plain(cfg.get("logger")) or {}) if self.main else {},
                                   self.record.history)
        except BaseException:
            self.lock.release()
            raise

    def _hold_run_dir(self):
        """The run directory made, locked and cleared of what a killed process left; returns the lock."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        held = lock(self.run_dir)
        try:
            remove_leftovers(self.run_dir, completed=completed_report(self.run_dir) is not None)
        except BaseException:
            held.release()
            raise
        return held

    def _new_record(self) -> RunRecord:
        distill = self.settings.distillation
        return RunRecord(
            experiment={"model": self.settings.model_name, "dataset": self.settings.dataset_name,
                        "strategy": self.strategy.name, "schedule": self.schedule.name, "seed": self.seed},
            strategy=self.strategy.describe(), schedule=self.schedule.describe(),
            structured=bool(self.strategy.structured), prune_classifier=bool(self.strategy.prune_classifier),
            distillation={"teacher": "the dense model", "temperature": distill.temperature,
                          "alpha": distill.alpha} if distill is not None else None)

    def _set_threads(self, wanted) -> int:
        """On CPU, small models train several times faster on one thread: their kernels are too short to
        split, and a second thread spin-waits (badly so when another process shares the cores)."""
        if self.device.type != "cpu":
            return torch.get_num_threads()
        if wanted == "auto":
            small = _dense_macs(self.spec, self.model, tuple(self.data.info.input_shape)) < SMALL_MODEL_MACS
            # Large models take torch's default: every core, or cores / workers in a joblib sweep's worker
            # (joblib sets OMP_NUM_THREADS there), so parallel jobs do not fight over the cores.
            wanted = 1 if small else DEFAULT_THREADS
        torch.set_num_threads(int(wanted))
        return int(wanted)

    # --- the whole run ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> dict:
        finished = completed_report(self.run_dir)
        if finished is not None:
            log.info("this run is already complete in %s; nothing to do", self.run_dir)
            self.loggers.close()
            return finished
        started = time.perf_counter()
        if self.state.resumed_from:
            log.info("resuming from %s", self.state.resumed_from)
            self.record.resumed_from = self.state.resumed_from
        import prune_cli.distributed as distributed
        try:
            masks = dense.train_dense(self)
            outcome = self.loop.run(self, masks)
            self.record.add_time("total", time.perf_counter() - started)
            # Measuring and writing the result is rank 0's; the others wait for it (and leave if it fails).
            report = distributed.on_main(lambda: self._finish(outcome))
            distributed.COMPLETED[0] = True
            return report
        finally:
            self.loggers.close()

    def _finish(self, outcome) -> dict:
        report = finish(self, outcome)
        self.loggers.finish(report)
        return report

    # --- steps the loops share -------------------------------------------------------------------------------
    def evaluate(self, model=None, precision: Optional[str] = None) -> tuple[float, Optional[float]]:
        """(test accuracy, validation accuracy or None when there is no validation split), in ``precision``:
        by default the fine-tuning's (the dense stage passes its own)."""
        model = model or self.model
        batch, precision = self.settings.eval_batch_size, precision or self.settings.finetune.precision
        with Timer(self.device) as t:
            test = evaluate(model, self.data.test, batch, precision, shard=True)
            val = evaluate(model, self.data.val, batch, precision, shard=True) if self.data.val is not None else None
        self.record.add_time("evaluate", t.seconds)
        return test, val

    def fit(self, stage: Stage, settings: StageSettings, masks: Optional[Masks], model=None, each_epoch=None,
            save_as=None, **kwargs) -> Optional[Masks]:
        """fit() with resume: starts at the saved epoch of this stage, saves progress at epoch ends; returns the
        masks in force at the end (``after_step`` may replace them).

        ``save_as``: when ``model`` is not the form the run state keeps (a shrunk model), gives the (model,
        masks) to save instead; called only when a save is due."""
        model = model or self.model
        start, optimizer_state, scaler_state = self.state.start_of(stage)
        if optimizer_state is not None and not _fits(optimizer_state, model):
            # Saved for parameters of other shapes (the stage's model was shrunk differently, or a run from
            # before finetune.on trained the masked model): continue with fresh optimizer state.
            log.warning("%s: the saved optimizer state does not fit the model; starting it afresh", stage)
            optimizer_state = None
        phase = stage.kind
        if phase in DISTILLED and self.settings.distillation is not None and "loss_fn" not in kwargs:
            kwargs["loss_fn"] = self.distillation()
        if phase != "train" and start == 0:  # a resumed stage was counted by the process that began it
            self.record.add_epochs(phase, settings.epochs)

        def on_epoch_end(epoch, optimizer, current_masks, scaler):
            if each_epoch is not None:
                each_epoch(epoch, model)
            if save_as is None:
                self.state.epoch_end(stage, epoch, model, current_masks, optimizer, scaler)
            elif self.state.save_due():
                self.state.epoch_end(stage, epoch, *save_as(), optimizer, scaler)

        with Timer(self.device) as t:
            masks = fit(model, self.data.train, settings, stage=str(stage), seed=stage_seed(self.seed, str(stage)),
                        masks=masks, start_epoch=start, optimizer_state=optimizer_state,
                        scaler_state=scaler_state,
                        on_epoch_end=on_epoch_end, on_epoch_stats=lambda entry: self.epoch_done(entry, model),
                        on_compiled=lambda seconds: self.record.add_time("compile", seconds),
                        progress=self.progress, **kwargs)
        self.record.add_time(phase, t.seconds)
        return masks

    def finetune(self, stage: Stage, settings: StageSettings, masks: Optional[Masks]) -> None:
        """Fine-tune the pruned model. A structured result trains its physically smaller form
        (``finetune.on=shrunk``): the same function with fewer multiply-adds, layers that could not shrink
        masked inside it. Its values go back into the full-size model before every save and at the end, so the
        masks, later rounds, the resume state and ``pruned.pt`` (which holds both forms) see what was trained;
        a resumed stage shrinks the saved full-size model again, the same way, and its optimizer state fits."""
        shrunk, why = self._shrunk(stage, masks)
        if shrunk is None:
            self.note_finetuned(stage, self.model, why)
            self.fit(stage, settings, masks)
            return
        self.note_finetuned(stage, shrunk.model, None)

        def save_as():
            shrunk.write_back(self.model)
            return self.model, masks

        self.fit(stage, settings, shrunk.masks, model=shrunk.model, save_as=save_as)
        shrunk.write_back(self.model)

    def _shrunk(self, stage: Stage, masks: Optional[Masks]):
        """(the smaller model to fine-tune, None) or (None, why the full-size masked model is trained)."""
        if not self.strategy.structured:
            return None, "unstructured masks keep every unit"
        if self.settings.finetune_on == "masked":
            return None, "finetune.on=masked"
        if masks is None:
            return None, "nothing is pruned"
        from prune_cli.pruning.shrink import shrink_for_training
        with Timer(self.device) as t:
            try:
                shrunk = shrink_for_training(self.model, masks, self.example)
            except (RuntimeError, TypeError) as err:  # e.g. the position check failed: train masked, not wrongly
                log.warning("%s: fine-tuning the masked model: %s", stage, err)
                return None, str(err)
        self.record.add_time("shrink", t.seconds)
        return (shrunk, None) if shrunk is not None else (None, "no unit can be removed")

    def note_finetuned(self, stage: Stage, model, why: Optional[str]) -> None:
        """The report's ``finetuned_on``: which form each fine-tune stage trained, and its parameter count
        (once per stage: a resumed stage's entry came back with the record)."""
        start = self.state.start_of(stage)[0]
        entry = {"stage": str(stage), "on": "shrunk" if why is None else "masked",
                 "params": int(sum(p.numel() for p in model.parameters()))}
        entry = entry if why is None else dict(entry, why=why)
        earlier = next((e for e in self.record.finetuned_on if e["stage"] == str(stage)), None)
        if start == 0 or earlier is None:
            self.record.finetuned_on.append(entry)
        elif earlier["on"] != entry["on"]:  # resumed under the other finetune.on: say what trained what
            earlier.clear()
            earlier.update(entry, note=f"epochs 1-{start} trained the {'masked' if why is None else 'shrunk'} model "
                                       f"before the run was resumed")

    def epoch_done(self, entry: dict, model) -> None:
        """One history entry per epoch (with the validation accuracy when there is a validation split), sent
        to the loggers, and one log line when no progress bar shows the run (nohup, SLURM, CI)."""
        if self.data.val is not None:
            with Timer(self.device) as t:
                stage = self.settings.train if entry["stage"] == str(TRAIN) else self.settings.finetune
                entry["val_accuracy"] = evaluate(model, self.data.val, self.settings.eval_batch_size,
                                                 stage.precision, shard=True)
            self.record.add_time("evaluate", t.seconds)
        self.record.history.append(entry)
        self.loggers.log_epoch(entry)
        if self.progress is None:
            val = f", val {100 * entry['val_accuracy']:.2f}%" if "val_accuracy" in entry else ""
            log.info("%s epoch %d/%d: loss %.4f, lr %.3g%s (%.2f s)", entry["stage"], entry["epoch"],
                     entry["epochs"], entry["loss"], entry["lr"], val, entry["seconds"])

    def keep_teacher(self) -> None:
        """After the dense stage: keep the dense weights as the distillation teacher (saved with the resume
        state, so a resumed run distils from the same model)."""
        if self.settings.distillation is not None:
            self.state.kept.teacher = cpu_copy(self.model)

    def distillation(self):
        """The fine-tune loss against the dense teacher's logits (``finetune.temperature``, ``alpha``)."""
        if getattr(self, "_teacher", None) is None:
            from prune_cli.models.spec import build
            with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep a resumed run's stream
                self._teacher = build(self.spec).to(self.device)
            self._teacher.load_state_dict(self.state.kept.teacher)
        from prune_cli.training.distill import distillation_loss
        distill = self.settings.distillation
        return distillation_loss(self._teacher, distill.temperature, distill.alpha)

    def restore_saved_weights(self, model) -> None:
        """Continue from the latest saved stage: its weights go into ``model`` (when a state was loaded)."""
        weights = self.state.saved_weights()
        if weights is not None:
            model.load_state_dict(weights)

    def context(self, round_index: int, target: float, masks: Optional[Masks],
                previous_target: float = 0.0) -> ScoringContext:
        """What a strategy scores (and, with ``prepare``, trains) in; ``masks`` are the masks in force."""
        finetune = self.settings.finetune

        def train_for(epochs: int, stage: str, **kwargs):
            # A strategy's own training (l1, l0) keeps the masks in force; its projections zero weights
            # in place, and the round's masks come from its scores afterwards.
            self.fit(Stage.parse(stage), finetune.with_epochs(epochs), masks, **kwargs)

        return ScoringContext(model=self.model, masks=masks if masks is not None else Masks.ones(self.model, self.prunable), train=self.data.train, prunable=self.prunable,
                              device=self.device, seed=self.seed, round=round_index,
                              batch_size=int(finetune.batch_size), target=target, previous_target=previous_target,
                              fit=train_for, unit_layers=self.unit_layers)

    def prune_to(self, target: float, ctx: ScoringContext, previous: Optional[Masks], share_scores: bool = False,
                 layer_rates: Optional[dict] = None) -> Masks:
        """Score, then turn scores into masks at exactly ``target`` (shared thresholding), applied in place and
        returned; they only shrink from ``previous`` (the masks in force, or None). A strategy that
        ``reconstructs`` gives its masks (and updated weights) itself.

        ``share_scores``: the loop says these are the first scores of the dense model, which a sweep over
        sparsities can compute once (``scores.py`` decides whether the strategy allows it).

        Across processes rank 0 alone scores while the others wait; then every rank takes its masks and
        weights, checked identical."""
        import prune_cli.distributed as distributed
        masks = distributed.on_main(lambda: self._masks_for(target, ctx, previous, share_scores, layer_rates))
        with Timer(self.device) as t:
            masks = distributed.agree(self.model, masks)
            masks.validate(self.model)
            masks.apply_(self.model)
        self.record.add_time("prune", t.seconds)
        return masks

    def _masks_for(self, target: float, ctx: ScoringContext, previous: Optional[Masks], share_scores: bool,
                   layer_rates: Optional[dict]) -> Masks:
        """The masks at ``target`` (within ``previous``), from the strategy's scores or its reconstruction."""
        masks = None
        with Timer(self.device) as t:
            if self.strategy.reconstructs:  # masks and new surviving weights, layer by layer
                try:
                    masks = self.strategy.reconstruct(ctx)
                except ValueError as err:  # earlier zeros (a pruned.pt) that this target cannot keep
                    raise UsageError(f"sparsity={target:.6g}: strategy={self.strategy.name}: {err}") from None
            else:
                scores = first_round_scores(self, ctx) if share_scores and previous is None \
                    else self.strategy.score(ctx)
        self.record.add_time("score", t.seconds)
        with Timer(self.device) as t:
            if masks is None:
                masks = self._threshold(scores, target, layer_rates, previous)
            masks = masks.to(self.device)
            if previous is not None:
                masks = previous.intersect(masks)
        self.record.add_time("prune", t.seconds)
        return masks

    def _threshold(self, scores, target: float, layer_rates: Optional[dict], previous: Optional[Masks]) -> Masks:
        """Scores -> masks at ``target``: whole units, N:M groups, or exact top-k (the strategy says which)."""
        pattern = self.strategy.pattern
        if self.strategy.structured:
            from prune_cli.pruning.units import select_units, unit_masks
            removed = select_units(scores, target, self.model, self.example, scope=self.strategy.scope,
                                   existing_masks=previous, prunable=self.prunable,
                                   layers=self.unit_layers)
            return Masks(unit_masks(self.model, self.example, removed, layers=self.unit_layers))
        if pattern is not None:
            from prune_cli.pruning.patterns import nm_masks
            try:
                return nm_masks(scores, pattern, pattern.kept_at(target), previous=previous)
            except ValueError as err:  # a pruned.pt whose zeros do not fit the pattern
                raise UsageError(f"strategy.pattern={pattern}: {err}") from None
        try:
            return topk_masks(scores, target, self.strategy.scope, previous=previous, layer_rates=layer_rates)
        except ValueError as err:  # per-layer rates the other layers cannot complete
            raise UsageError(f"sparsity={target:.6g}: {err}") from None

    def round_masks(self, masks: Optional[Masks]) -> Optional[dict]:
        """What a round record keeps of the masks: a CPU copy when asked for (``keep_round_masks``)."""
        return masks.cpu_state() if self.keep_round_masks and masks is not None else None

    def achieved(self) -> float:
        """Sparsity of the prunable weights of the (in-place pruned) model now, counted from the weights."""
        return model_sparsity(self.model, self.prunable)[0]

    def layer_sparsities(self) -> dict:
        """{prunable weight: sparsity} of the model now, counted from the weights."""
        params = dict(self.model.named_parameters())
        return {name: zero_count(params[name]) / params[name].numel() for name in self.prunable}

    def outcome(self, masks: Optional[Masks]) -> Outcome:
        """The result of a loop that pruned the run's own model in place."""
        return Outcome(self.model, self.spec, masks, self.prunable)
