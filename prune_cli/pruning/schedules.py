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

    def fit(self, model_name: str, shapes: dict, classifier: str, strategy_sets_rates: bool) -> None:
        """Bind to the model before any target is asked for: its name, prunable weights ({name: shape}), the
        output layer's weight, and whether the strategy allocates every layer itself. Default: nothing."""

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


# Frankle & Carbin (2019), Figure 2: per-round rates of the small nets they prune layer by layer. Conv layers
# lose their own rate, fully-connected ones ``rate_per_round``, the output layer half that (classifier_rate).
PAPER_CONV_RATES = {"lenet300": None, "conv2": 0.1, "conv4": 0.1, "conv6": 0.15}


class Lottery(Schedule):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019), the paper's protocol by default:
    every round each layer loses a fixed fraction of the weights it still has (``rate_per_round``, 0.2; the
    output layer ``classifier_rate`` times that, 0.1), the surviving weights go back to their values at
    initialisation (or at ``rewind_epoch`` of dense training) and are retrained for the full training length,
    ``train.epochs`` (``epochs_per_round`` overrides). The number of rounds follows from the rates and the
    target: rounds at the paper's rates until the nearest whole number of rounds, the last one taking what is
    left so that it lands exactly on ``sparsity`` (``rounds=N`` instead spaces N equal rounds along the same
    per-layer path).

    ``protocol``: ``layerwise`` (the paper's LeNet-300-100 and Conv-2/4/6: each layer at its own rate; Conv-2/4
    convolutions 10%, Conv-6 15% per round, ``conv_rate`` overrides), ``global`` (Frankle et al. 2020 and
    OpenLTH for deep nets: all layers but the output one ranked together, losing ``rate_per_round`` of what
    they have left; the output layer at its own rate), ``totals`` (only the round totals; the strategy
    allocates them: what structured, N:M and reconstructing strategies do) or ``auto`` (layerwise for the
    paper's models, global for the others, totals where the strategy sets every layer's rate itself).

    ``reinit=true`` adds the paper's random re-initialisation control: the ticket's own final masks, trained
    once more from a fresh initialisation (same masks, new weights); the report's fine-tuned accuracy is then
    the control's."""
    name = "lottery"
    rewind = True

    config_schema = {"rate_per_round": Num(0.0, 1.0, lo_open=True, hi_open=True), "classifier_rate": Num(0.0, 1.0),
                     "conv_rate": Optional_(Num(0.0, 1.0, lo_open=True, hi_open=True)),
                     "protocol": Choice(("auto", "layerwise", "global", "totals")),
                     "rounds": Optional_(Int(1, 10_000)), "epochs_per_round": Optional_(Int(0, 100_000)),
                     "rewind_epoch": Int(0, 100_000), "reinit": Bool()}

    def __init__(self, rate_per_round: float = 0.2, classifier_rate: float = 0.5, conv_rate: Optional[float] = None,
                 protocol: str = "auto", rounds: Optional[int] = None, epochs_per_round: Optional[int] = None,
                 rewind_epoch: int = 0, reinit: bool = False, **kw):
        super().__init__(**kw)
        self.rate, self.classifier_rate = float(rate_per_round), float(classifier_rate)
        self.conv_rate = None if conv_rate is None else float(conv_rate)
        self.protocol, self.rounds = protocol, None if rounds is None else int(rounds)
        self.fixed_epochs = None if epochs_per_round is None else int(epochs_per_round)
        self.rewind_epoch, self.reinit = int(rewind_epoch), bool(reinit)
        self.groups: Optional[list] = None   # [(weight names, per-round rate, own rate?)], set by ``fit``
        self.resolved = protocol

    def fit(self, model_name: str, shapes: dict, classifier: str, strategy_sets_rates: bool) -> None:
        """Bind the protocol to the model's prunable weights ({name: shape}, in order): which layers lose
        which fraction per round. ``strategy_sets_rates``: the strategy allocates every layer itself."""
        protocol = self.protocol
        if protocol == "auto":
            protocol = ("totals" if strategy_sets_rates else
                        "layerwise" if model_name in PAPER_CONV_RATES else "global")
        elif protocol != "totals" and strategy_sets_rates:
            raise UsageError(f"schedule.protocol={protocol}: the strategy sets every layer's rate itself (structured, "
                             f"N:M, reconstructing or with strategy.layer_sparsity); use schedule.protocol=totals")
        self.resolved = protocol
        names = list(shapes)
        head = [classifier] if classifier in shapes and protocol != "totals" else []
        body = [n for n in names if n not in head]
        if protocol == "layerwise":
            conv = self.conv_rate if self.conv_rate is not None else (PAPER_CONV_RATES.get(model_name) or self.rate)
            self.groups = [([n], conv if len(shapes[n]) > 2 else self.rate, True) for n in body]
        else:
            self.groups = [(body, self.rate, False)] if body else []
        self.groups += [(head, self.classifier_rate * self.rate, True)] if head else []
        self.sizes = {n: math.prod(shapes[n]) for n in names}

    def _fitted(self):
        if self.groups is None:
            raise RuntimeError("Lottery.fit(model_name, shapes, classifier, ...) must come before its targets")
        return self.groups

    def _total(self, x: float) -> float:
        """Overall sparsity after ``x`` rounds (x need not be whole: the last round may be part of one)."""
        zeros = sum(sum(self.sizes[n] for n in names) * (1.0 - (1.0 - rate) ** x) for names, rate, _ in self._fitted())
        return zeros / sum(self.sizes.values())

    MAX_ROUNDS = 10_000

    def _rounds_to(self, sparsity: float) -> float:
        """The (fractional) number of rounds at which the overall sparsity is exactly ``sparsity``."""
        if sparsity <= 0.0:
            return 0.0
        reachable = sum(sum(self.sizes[n] for n in names) for names, rate, _ in self._fitted() if rate > 0)
        limit = reachable / sum(self.sizes.values())
        if sparsity >= limit:
            raise UsageError(f"sparsity={sparsity}: schedule=lottery can reach at most {limit:.6f} "
                             f"(schedule.classifier_rate={self.classifier_rate:g} leaves the output layer dense)")
        if self._total(self.MAX_ROUNDS) < sparsity:
            raise UsageError(f"schedule.rate_per_round={self.rate:g}: reaching sparsity={sparsity} would take more "
                             f"than {self.MAX_ROUNDS:,} rounds; use a larger rate")
        lo, hi = 0.0, float(self.MAX_ROUNDS)
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self._total(mid) < sparsity else (lo, mid)
        return hi

    def round_points(self, sparsity: float) -> list[float]:
        """Where each round ends, in rounds of the per-layer rates: 1, 2, ... and the last exactly on target."""
        end = self._rounds_to(sparsity)
        if self.rounds is not None:
            return [end * i / self.rounds for i in range(1, self.rounds + 1)]
        count = max(1, round(end))
        return [float(i) for i in range(1, count)] + [end]

    def targets(self, sparsity):
        out = [self._total(x) for x in self.round_points(sparsity)]
        out[-1] = float(sparsity)  # exactly, whatever the floating point did
        return out

    def layer_rates(self, target, sizes, classifier):
        """Each own-rate layer's sparsity once the overall sparsity is ``target`` (the others, ranked together,
        share the rest): ``1 - (1 - rate) ** rounds``, the rounds where the total reaches ``target``."""
        own = [(names, rate) for names, rate, is_own in self._fitted() if is_own]
        if not own:
            return None
        x = self._rounds_to(target)
        return {name: 1.0 - (1.0 - rate) ** x for names, rate in own for name in names}

    def epochs_per_round(self, finetune_epochs, rounds, train_epochs=0):
        if self.fixed_epochs is not None:
            return [self.fixed_epochs] * rounds
        return [int(train_epochs)] * rounds  # the paper's protocol: the full training length, every round

    def check_budget(self, train_epochs, finetune_epochs):
        if self.rewind_epoch > train_epochs:
            raise UsageError(f"schedule.rewind_epoch={self.rewind_epoch}: must be at most train.epochs "
                             f"({train_epochs}), the epochs of dense training it rewinds to")
        if int(train_epochs) == 0 and self.fixed_epochs is None:
            raise UsageError("train.epochs=0: schedule=lottery retrains for train.epochs every round, so its rounds "
                             "would not train at all; set schedule.epochs_per_round")

    def describe(self):
        out = {"name": self.name, "protocol": self.resolved, "rate_per_round": self.rate,
               "classifier_rate": self.classifier_rate, "rounds": self.rounds,
               "epochs_per_round": self.fixed_epochs, "rewind_epoch": self.rewind_epoch, "reinit": self.reinit}
        if self.groups is not None:
            out["layer_rates"] = {name: rate for names, rate, is_own in self.groups for name in names if is_own}
        return out


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
