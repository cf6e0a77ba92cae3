"""A stage of the pipeline as a value: a step (``train``, ``round2``, ``gradual``, ``control``, ``compress``) and,
within it, a phase (``prepare``, ``prune``, ``finetune``, or a strategy's own training, ``l1`` or ``l0``).

Its text form (``round2.finetune``) is what ``state.pt``, the history and the timings hold, and what each
stage's random seed is derived from, so it never changes for a given stage. A stage equals its text form
(``Stage("round2", "finetune") == "round2.finetune"``), so code that logs or matches stage names by text keeps
working.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, eq=False)
class Stage:
    step: str
    phase: str = ""

    def __str__(self) -> str:
        return f"{self.step}.{self.phase}" if self.phase else self.step

    def __eq__(self, other) -> bool:
        if isinstance(other, (Stage, str)):
            return str(self) == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))

    @classmethod
    def parse(cls, text) -> "Stage":
        if isinstance(text, Stage):
            return text
        step, _, phase = str(text).partition(".")
        return cls(step, phase)

    @classmethod
    def of_round(cls, index: int, phase: str) -> "Stage":
        return cls(f"round{index}", phase)

    @property
    def kind(self) -> str:
        """What the budget, the timings and distillation go by: the phase, or the step when it has none
        (``round2.finetune`` -> ``finetune``, ``control`` -> ``control``)."""
        return self.phase or self.step


TRAIN = Stage("train")
CONTROL = Stage("control")
CONTROL_PRUNE = Stage("control", "prune")
COMPRESS = Stage("compress")
GRADUAL_PREPARE = Stage("gradual", "prepare")
GRADUAL_FINETUNE = Stage("gradual", "finetune")
