"""The run record: what a run has measured so far, typed. The report is built from it (and the saved weights).

It is saved with the resume state as plain data (``to_state``) and read back (``from_state``), so a resumed
run reports every stage, including the ones an earlier process ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional


def _phases() -> dict:
    return {"dense": None, "pruned": None, "finetuned": None}


@dataclass
class Round:
    """One score -> prune -> fine-tune step. ``masks`` (the masks this round left) stays in memory only."""
    round: int
    target: float
    sparsity: float
    accuracy_pruned: Optional[float] = None   # test accuracy right after this round's prune
    accuracy: Optional[float] = None          # test accuracy after this round's fine-tuning
    val_accuracy_pruned: Optional[float] = None
    val_accuracy: Optional[float] = None
    epochs: Optional[int] = None              # fine-tune epochs of the round (round loops)
    step: Optional[int] = None                # optimizer step it pruned at (gradual pruning)
    seconds: float = 0.0
    layers: Optional[dict] = None             # {weight name: sparsity} right after this round's prune
    masks: Optional[dict] = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "masks"}
        for optional in ("epochs", "step", "val_accuracy_pruned", "val_accuracy", "layers"):
            if out[optional] is None:
                out.pop(optional)
        return out


@dataclass
class RunRecord:
    experiment: dict = field(default_factory=dict)   # what ran: model, dataset, strategy, ... (report.experiment)
    strategy: dict = field(default_factory=dict)     # Strategy.describe()
    schedule: dict = field(default_factory=dict)     # Schedule.describe()
    structured: bool = False
    prune_classifier: bool = True
    accuracy: dict = field(default_factory=_phases)
    val_accuracy: Optional[dict] = None               # the same phases on the validation split, when there is one
    rounds: list[Round] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    compress: Optional[dict] = None                   # the smaller-model baseline's width and weight counts
    budget: dict = field(default_factory=dict)        # epochs of each training phase after the dense stage
    resumed_from: Optional[dict] = None
    distillation: Optional[dict] = None               # finetune.distill: teacher, temperature, alpha
    history: list = field(default_factory=list)       # one entry per epoch of every training phase
    finetuned_on: list = field(default_factory=list)  # per fine-tune stage: the form trained and its size
    pruned_at: Optional[str] = None                   # the moment accuracy["pruned"] was measured (per loop)

    def add_epochs(self, phase: str, epochs: int) -> None:
        self.budget[phase] = self.budget.get(phase, 0) + int(epochs)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def set_accuracy(self, phase: str, test: Optional[float], val: Optional[float]) -> None:
        self.accuracy[phase] = test
        if val is not None:
            self.val_accuracy = self.val_accuracy or _phases()
            self.val_accuracy[phase] = val

    def to_state(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rounds"] = [r.as_dict() for r in self.rounds]
        return out

    @classmethod
    def from_state(cls, state: dict) -> "RunRecord":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        values["rounds"] = [Round(**r) for r in values.get("rounds", [])]
        return cls(**values)
