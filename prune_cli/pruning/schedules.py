"""Schedules say how the target sparsity is reached: the cumulative target of every round.

Every schedule's targets are monotone and end exactly at ``sparsity``. ``gradual`` prunes inside one
fine-tuning run instead of in rounds; its targets come from Zhu & Gupta's cubic formula.
"""
from __future__ import annotations

import math
from typing import Optional

from prune_cli.errors import UsageError
from prune_cli.schema import Bool, Choice, Int, Num, Optional_


class Schedule:
    """Base class: a schedule yields the cumulative target of every round and names the loop that runs them.

    A new schedule overrides ``targets``; it runs in the ``rounds`` loop (score -> prune -> fine-tune per
    round) unless it names another loop of ``prune_cli.pipeline.loops``.
    """
    name = "schedule"
    loop = "rounds"         # which pipeline loop runs this schedule
    rewind = False          # lottery: reset surviving weights after each prune
    rewind_epoch = 0        # the epoch of dense training rewinding goes back to (0: initialisation)
    reinit = False          # lottery control: fresh weights instead of the rewind point

    def __init__(self, name: Optional[str] = None):
        if name:
            self.name = name

    def targets(self, sparsity: float) -> list[float]:
        """Cumulative sparsity after each round: monotone, the last exactly ``sparsity``."""
        raise NotImplementedError

    def check_budget(self, train_epochs: int, finetune_epochs: int) -> None:
        """Refuse, before any training, epochs this schedule cannot work with (UsageError). Default: any."""

    def layer_rates(self, target: float, sizes: dict, classifier: str) -> Optional[dict]:
        """Per-layer sparsities a round's prune must meet exactly ({name: fraction}); the other layers share
        the rest of the round's target. Default: none."""
        return None

    def epochs_per_round(self, finetune_epochs: int, rounds: int, train_epochs: int = 0) -> list[int]:
        """Split the fine-tune budget over the rounds (earlier rounds get the remainder)."""
        base, extra = divmod(finetune_epochs, rounds)
        return [base + (1 if r < extra else 0) for r in range(rounds)]

    def describe(self) -> dict:
        return {"name": self.name}


class OneShot(Schedule):
    """Prune once to the target, then fine-tune."""
    name = "oneshot"

    def targets(self, sparsity):
        return [float(sparsity)]


class Iterative(Schedule):
    """``rounds`` of score -> prune -> fine-tune. ``geometric`` removes the same fraction of what remains each
    round (lottery-ticket style); ``linear`` adds the same sparsity each round."""
    name = "iterative"

    config_schema = {"rounds": Int(1, 10_000), "spacing": Choice(("geometric", "linear")),
                     "epochs_per_round": Optional_(Int(0, 100_000))}

    def __init__(self, rounds: int = 5, spacing: str = "geometric", epochs_per_round: Optional[int] = None, **kw):
        super().__init__(**kw)
        self.rounds, self.spacing = int(rounds), spacing
        self.fixed_epochs = None if epochs_per_round is None else int(epochs_per_round)

    def targets(self, sparsity):
        r = self.rounds
        if self.spacing == "linear":
            out = [sparsity * (i + 1) / r for i in range(r)]
        else:
            out = [1.0 - (1.0 - sparsity) ** ((i + 1) / r) for i in range(r)]
        out[-1] = float(sparsity)  # exactly, whatever the floating point did
        return out

    def epochs_per_round(self, finetune_epochs, rounds, train_epochs=0):
        if self.fixed_epochs is not None:
            return [self.fixed_epochs] * rounds
        return super().epochs_per_round(finetune_epochs, rounds)

    def check_budget(self, train_epochs, finetune_epochs):
        if self.rounds > 1 and self.fixed_epochs is None and finetune_epochs < self.rounds:
            raise UsageError(f"schedule.rounds={self.rounds}: needs finetune.epochs >= rounds (got "
                             f"{finetune_epochs}) or schedule.epochs_per_round set")

    def describe(self):
        return {"name": self.name, "rounds": self.rounds, "spacing": self.spacing,
                "epochs_per_round": self.fixed_epochs}


class Lottery(Iterative):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019): after each prune the surviving
    weights go back to their values at initialisation (or at ``rewind_epoch`` of dense training) and are
    retrained for the full training length, ``train.epochs``, every round (``epochs_per_round`` overrides).

    ``classifier_rate``: the output layer is pruned at that fraction of the other layers' rate (the paper
    uses 0.5), the total still exactly the round's target. ``reinit=true`` adds the paper's random
    re-initialisation control: the ticket's own final masks, trained once more from a fresh initialisation
    (same masks, new weights); the report's fine-tuned accuracy is then the control's."""
    name = "lottery"
    rewind = True

    config_schema = {"rewind_epoch": Int(0, 100_000), "reinit": Bool(), "classifier_rate": Num(0.0, 1.0)}

    def __init__(self, rewind_epoch: int = 0, reinit: bool = False, classifier_rate: float = 1.0, **kw):
        super().__init__(**kw)
        self.rewind_epoch, self.reinit = int(rewind_epoch), bool(reinit)
        self.classifier_rate = float(classifier_rate)

    def epochs_per_round(self, finetune_epochs, rounds, train_epochs=0):
        if self.fixed_epochs is not None:
            return [self.fixed_epochs] * rounds
        return [int(train_epochs)] * rounds  # the paper's protocol: the full training length, every round

    def layer_rates(self, target, sizes, classifier):
        if self.classifier_rate == 1.0 or classifier not in sizes:
            return None
        total, head = sum(sizes.values()), sizes[classifier]
        # n_other * s + n_head * rate * s = target * n_total, so the total stays exactly the target.
        others = target * total / (total - head + self.classifier_rate * head)
        return {classifier: self.classifier_rate * others}

    def check_budget(self, train_epochs, finetune_epochs):
        if self.rewind_epoch > train_epochs:
            raise UsageError(f"schedule.rewind_epoch={self.rewind_epoch}: must be at most train.epochs "
                             f"({train_epochs}), the epochs of dense training it rewinds to")

    def describe(self):
        return {**super().describe(), "rewind_epoch": self.rewind_epoch, "reinit": self.reinit,
                "classifier_rate": self.classifier_rate}


class Gradual(Schedule):
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, pruning every ``frequency``
    optimizer steps from ``start`` to ``end`` (fractions of the fine-tune steps), then fine-tuning at the
    final mask for the remaining steps."""
    name = "gradual"
    loop = "gradual"
    config_schema = {"frequency": Int(1, 10_000_000), "start": Num(0.0, 1.0), "end": Num(0.0, 1.0),
                     "initial_sparsity": Num(0.0, 1.0, hi_open=True)}

    def __init__(self, frequency: int = 10, start: float = 0.0, end: float = 0.7,
                 initial_sparsity: float = 0.0, **kw):
        super().__init__(**kw)
        if not 0.0 <= float(start) < float(end) <= 1.0:
            raise ValueError(f"schedule.start={start}, schedule.end={end}: need 0 <= start < end <= 1")
        self.frequency, self.start, self.end = int(frequency), float(start), float(end)
        self.initial_sparsity = float(initial_sparsity)

    def pruning_steps(self, total_steps: int) -> list[int]:
        """Optimizer steps (1-based, after the step) at which to prune; the last one is exactly the end step."""
        t0 = max(1, int(math.floor(self.start * total_steps)))
        t_end = max(t0, int(math.floor(self.end * total_steps)))
        steps = list(range(t0, t_end, self.frequency))
        if not steps or steps[-1] != t_end:
            steps.append(t_end)
        return steps

    def sparsity_at(self, step: int, final: float, total_steps: int) -> float:
        steps = self.pruning_steps(total_steps)
        t0, t_end = steps[0], steps[-1]
        if step >= t_end:
            return float(final)
        if t_end == t0:
            return float(final)
        progress = (step - t0) / (t_end - t0)
        return final + (self.initial_sparsity - final) * (1.0 - progress) ** 3

    def check_budget(self, train_epochs, finetune_epochs):
        if finetune_epochs < 1:
            raise UsageError(f"finetune.epochs={finetune_epochs}: schedule={self.name} prunes during "
                             f"fine-tuning, so it needs at least 1")

    def describe(self):
        return {"name": self.name, "frequency": self.frequency, "start": self.start, "end": self.end,
                "initial_sparsity": self.initial_sparsity}
