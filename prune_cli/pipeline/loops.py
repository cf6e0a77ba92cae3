"""The loops a run can take after the dense stage, by name. A schedule names its loop (``Schedule.loop``); a
strategy that replaces pruning altogether names its own (``Strategy.loop``), which then wins.

Every loop module has ``plan(...)`` (what it will do, as plain data: the dry run prints it) and ``run(exp)``.
"""
from __future__ import annotations

from types import ModuleType

from prune_cli.errors import UsageError
from prune_cli.pipeline import gradual, rounds, smaller

LOOPS: dict[str, ModuleType] = {"rounds": rounds, "gradual": gradual, "smaller_model": smaller}


def loop_for(strategy, schedule) -> ModuleType:
    name = strategy.loop or schedule.loop
    if name not in LOOPS:
        who = f"strategy={strategy.name}" if strategy.loop else f"schedule={schedule.name}"
        raise UsageError(f"{who}: names loop {name!r}; the loops are {', '.join(LOOPS)}")
    return LOOPS[name]
