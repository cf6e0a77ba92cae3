"""Resumable run state: ``state.pt`` in the run directory.

Saved atomically at every stage boundary and, inside a stage, at an epoch end once ``every_s`` seconds have
passed since the last save (0 = every epoch), so saving stays cheap when epochs take milliseconds. A re-run
into the same directory skips finished stages and continues the stage in progress from its last saved epoch.
Training randomness depends only on (seed, stage, epoch), so the resumed run computes what an uninterrupted
one would have.

The state holds the weights of whichever model the latest stage trained; the stage that continues puts them
back (``saved_weights``), so this file knows nothing about which stages exist. Whole-model copies that later
stages need (the initial weights, the rewind point, the teacher) are named fields of ``KeptWeights``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import torch

from prune_cli.errors import UsageError
from prune_cli.pipeline.stages import Stage
from prune_cli.pruning.masks import Masks
from prune_cli.storage.atomic import atomic_torch_save
from prune_cli.storage.run_dir import STATE
from prune_cli.storage.safe_load import safe_load

StateDict = dict  # {name: CPU tensor}, a model's state_dict


@dataclass
class KeptWeights:
    """Whole-model weights (CPU state dicts) a later stage needs, kept with the resume state."""
    initial: Optional[StateDict] = None       # the model before dense training
    rewind_point: Optional[StateDict] = None  # after dense epoch ``schedule.rewind_epoch``, while training
    rewind: Optional[StateDict] = None        # what a rewinding schedule's rounds go back to
    teacher: Optional[StateDict] = None       # the dense model: distillation's teacher, compress's too

    @classmethod
    def from_saved(cls, saved: Optional[dict]) -> "KeptWeights":
        saved = saved if isinstance(saved, dict) else {}
        return cls(**{f.name: saved.get(f.name) for f in fields(cls)})


def cpu_copy(model) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class RunState:
    def __init__(self, run_dir: Path, fingerprint: str, every_s: float, writes: bool = True):
        """``writes``: whether this process saves the state (in a run across processes only rank 0 does; the
        others keep the same bookkeeping in memory)."""
        self.path = Path(run_dir) / STATE
        self.writes = writes
        self.fingerprint = fingerprint
        self.every_s = float(every_s)
        self.done: list[Stage] = []
        self.position: Optional[dict] = None      # {"stage": Stage, "epoch", "optimizer", "scaler"} of a stage
                                                  # in progress ("scaler": fp16's gradient scaler, else None)
        self.model_state: Optional[dict] = None
        self.masks: Optional[dict] = None
        self.record: dict = {}                    # the run record's fields, as plain data
        self.kept = KeptWeights()
        self.resumed_from: Optional[dict] = None
        self.rng: Optional[dict] = None           # global RNG states at the last save
        self.snapshot: Callable[[], dict] = lambda: self.record  # what to save as the record
        self._last_save = time.monotonic()
        self.saves = 0
        self.save_seconds = 0.0

    def load(self) -> "RunState":
        """Read ``state.pt`` if there is one (the caller has checked it belongs to this config)."""
        if not self.path.exists():
            return self
        saved = safe_load(self.path)
        problem = _malformed(saved)
        if problem:
            raise UsageError(f"{self.path}: not a resume state prune-run wrote ({problem}); remove it to start "
                             f"this run over")
        self.done = [Stage.parse(s) for s in saved["done"]]
        position = saved.get("position")
        self.position = dict(position, stage=Stage.parse(position["stage"])) if position is not None else None
        self.model_state, self.masks = saved.get("model"), saved.get("masks")
        self.record = saved.get("record", {})
        self.kept = KeptWeights.from_saved(saved.get("kept"))
        self.rng = saved.get("rng")
        if self.position is not None:
            self.resumed_from = {"stage": str(self.position["stage"]), "epoch": int(self.position["epoch"])}
        elif self.done:
            self.resumed_from = {"stage": str(self.done[-1]), "epoch": None}
        return self

    def is_done(self, stage: Stage) -> bool:
        return stage in self.done

    def in_progress(self, step: str) -> bool:
        """Saved in the middle of a stage of ``step`` (``round2`` covers ``round2.finetune``)."""
        return self.position is not None and self.position["stage"].step == step

    def start_of(self, stage: Stage) -> tuple[int, Optional[dict], Optional[dict]]:
        """(epoch to start from, optimizer state, gradient scaler state) for a stage about to run."""
        if self.position is not None and self.position["stage"] == stage:
            return int(self.position["epoch"]), self.position.get("optimizer"), self.position.get("scaler")
        return 0, None, None

    def _write(self, model, masks: Optional[Masks]) -> None:
        if not self.writes:
            self._last_save = time.monotonic()
            return
        start = time.perf_counter()
        position = None if self.position is None else dict(self.position, stage=str(self.position["stage"]))
        atomic_torch_save({
            "fingerprint": self.fingerprint, "done": [str(s) for s in self.done], "position": position,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "masks": masks.cpu_state() if masks else None,
            "record": self.snapshot(), "kept": asdict(self.kept), "rng": _rng_state(),
        }, self.path)
        self._last_save = time.monotonic()
        self.saves += 1
        self.save_seconds += time.perf_counter() - start

    def save_due(self) -> bool:
        """Whether ``epoch_end`` would save now (``every_s`` has passed since the last save)."""
        return time.monotonic() - self._last_save >= self.every_s

    def epoch_end(self, stage: Stage, epoch: int, model, masks: Optional[Masks], optimizer, scaler=None) -> None:
        """Maybe save mid-stage progress (throttled by ``every_s``); ``scaler``: fp16's gradient scaler."""
        if not self.save_due():
            return
        self.position = {"stage": stage, "epoch": epoch, "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else None}
        self._write(model, masks)

    def boundary(self, stage: Stage, model, masks: Optional[Masks]) -> None:
        """A stage finished: always saved."""
        self.done.append(stage)
        self.position = None
        self._write(model, masks)

    def saved_weights(self) -> Optional[dict]:
        """The weights of the model the latest saved stage trained, once: the stage that continues takes them."""
        weights, self.model_state = self.model_state, None
        return weights

    @property
    def weights_pending(self) -> bool:
        """Saved weights that no stage has taken back yet (a loop that forgot to would save a fresh model)."""
        return self.model_state is not None

    def saved_masks(self, device) -> Optional[Masks]:
        return Masks.from_state(self.masks, device) if self.masks else None

    def restore_rng(self) -> None:
        if self.rng:
            # Shuffles have their own generators; the global RNG still drives dropout and the like.
            torch.set_rng_state(self.rng["cpu"])
            if torch.cuda.is_available() and self.rng.get("cuda"):
                torch.cuda.set_rng_state_all(self.rng["cuda"])

    def remove(self) -> None:
        if self.writes:
            self.path.unlink(missing_ok=True)


def _tensors(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in value.items())


# What torch.amp.GradScaler.state_dict() holds (load_state_dict reads each key).
SCALER_STATE = {"scale": float, "growth_factor": float, "backoff_factor": float, "growth_interval": int,
                "_growth_tracker": int}


def _malformed(saved) -> Optional[str]:
    """What is wrong with the types of a loaded ``state.pt`` (it reads as data, but must also be *our* data:
    a file with the right fingerprint and wrong types would otherwise fail deep inside a stage), or None."""
    if not isinstance(saved, dict):
        return f"a {type(saved).__name__}, not a mapping"
    done = saved.get("done")
    if not isinstance(done, list) or not all(isinstance(s, str) for s in done):
        return "'done' is not a list of stage names"
    position = saved.get("position")
    if position is not None and not (isinstance(position, dict) and isinstance(position.get("stage"), str)
                                     and isinstance(position.get("epoch"), int)
                                     and isinstance(position.get("optimizer", {}), (dict, type(None)))):
        return "'position' is not a stage, an epoch and an optimizer state"
    scaler = position.get("scaler") if isinstance(position, dict) else None
    if scaler is not None and not (isinstance(scaler, dict) and set(scaler) == set(SCALER_STATE) and all(
            isinstance(scaler[key], kind) and not isinstance(scaler[key], bool) for key, kind in SCALER_STATE.items())):
        return "'position.scaler' is not a gradient scaler's state"
    for key in ("model", "masks"):
        if saved.get(key) is not None and not _tensors(saved[key]):
            return f"'{key}' is not a mapping of names to tensors"
    if not isinstance(saved.get("record", {}), dict):
        return "'record' is not a mapping"
    kept = saved.get("kept")
    if kept is not None and not (isinstance(kept, dict) and all(v is None or _tensors(v) for v in kept.values())):
        return "'kept' is not a mapping of names to weights"
    rng = saved.get("rng")
    if rng is not None and not (isinstance(rng, dict) and isinstance(rng.get("cpu"), torch.Tensor)
                                and isinstance(rng.get("cuda", []), list)):
        return "'rng' is not a generator state"
    return None


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
