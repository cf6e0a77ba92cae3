"""The config schema: every key a run reads, with its type and range, checked before any work.

One table per group: the top-level knobs and the stage, cache, checkpoint, measure and export sections here;
each dataset's keys here, by name; a strategy's, schedule's or model's keys next to its class, as the class
attribute ``config_schema`` (merged along its base classes), so that a class of your own brings its schema
along. A class without one is checked against its constructor: a key it does not name is refused, and a key
whose default is a bool, int, float or str must be one.

Every problem is one line naming the key, the value and what is allowed: unknown keys are refused
everywhere; wrong types, NaN, infinities, out-of-range and empty values alike.
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from prune_cli.errors import UsageError


class Spec:
    def accepts(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Num(Spec):
    """A finite number (never a bool), within [lo, hi]; ``lo_open``/``hi_open`` exclude the ends."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))

    def describe(self) -> str:
        kind = "integer" if self.integer else "number"
        if self.lo == 0 and self.lo_open and self.hi is None:
            return f"a positive {kind}"
        if self.lo == 1 and self.integer and not self.lo_open:
            return "a positive integer" + ("" if self.hi is None else f" (at most {self.hi:,})")
        if self.lo == 0 and not self.lo_open and (self.hi is None or self.integer):
            return f"a non-negative {kind}" + ("" if self.hi is None else f" (at most {self.hi:,})")
        if self.lo == 0 and self.lo_open and self.hi is not None and not self.integer and not self.hi_open:
            return f"a positive number (at most {self.hi:g})"
        if self.lo is not None and self.hi is not None:
            return f"a{'n integer' if self.integer else ' number'} in {'(' if self.lo_open else '['}{self.lo:g}, " \
                   f"{self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"a{'n integer' if self.integer else ' number'} {'>' if self.lo_open else '>='} {self.lo:g}"
        return f"a finite {kind}"


def Int(lo: Optional[int] = None, hi: Optional[int] = None) -> Num:  # noqa: N802 - reads like a type
    return Num(lo, hi, integer=True)


@dataclass(frozen=True)
class Choice(Spec):
    values: tuple

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        return self.values[0] if len(self.values) == 1 else f"one of {', '.join(self.values)}"


@dataclass(frozen=True)
class Bool(Spec):
    def accepts(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Text(Spec):
    """A non-empty string, optionally matching ``pattern`` (the whole string)."""
    pattern: Optional[str] = None
    what: str = "a non-empty string"

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value != "" and (self.pattern is None
                                                          or re.fullmatch(self.pattern, value) is not None)

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_len: int = 0
    max_len: Optional[int] = None

    def accepts(self, value) -> bool:
        return (isinstance(value, (list, tuple)) and len(value) >= self.min_len
                and (self.max_len is None or len(value) <= self.max_len) and all(map(self.item.accepts, value)))

    def describe(self) -> str:
        size = (f"{self.min_len} " if self.min_len == self.max_len else
                f"at least {self.min_len} " if self.min_len else "")
        return f"a list of {size}items, each {self.item.describe()}"


@dataclass(frozen=True)
class MapOf(Spec):
    """A mapping of names to values of one spec (e.g. per-layer rates)."""
    value: Spec

    def accepts(self, value) -> bool:
        return isinstance(value, dict) and all(isinstance(k, str) and self.value.accepts(v) for k, v in value.items())

    def describe(self) -> str:
        return f"a mapping of names to values, each {self.value.describe()}"


@dataclass(frozen=True)
class AnyOf(Spec):
    options: tuple

    def accepts(self, value) -> bool:
        return any(option.accepts(value) for option in self.options)

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)


@dataclass(frozen=True)
class Null(Spec):
    def accepts(self, value) -> bool:
        return value is None

    def describe(self) -> str:
        return "null"


def Optional_(spec: Spec) -> AnyOf:  # noqa: N802
    return AnyOf((spec, Null()))


@dataclass(frozen=True)
class Noted(Spec):
    """A spec whose message also says what the key means."""
    spec: Spec
    note: str

    def accepts(self, value) -> bool:
        return self.spec.accepts(value)

    def describe(self) -> str:
        return f"{self.spec.describe()} ({self.note})"


@dataclass(frozen=True)
class Free(Spec):
    """Anything (a mapping of options handed on as they are, a free-form note)."""
    mapping: bool = False

    def accepts(self, value) -> bool:
        return not self.mapping or isinstance(value, dict)

    def describe(self) -> str:
        return "a mapping" if self.mapping else "anything"


# ----------------------------------------------------------------------------------------------- the tables

NAME = Text(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", "a name of letters, digits and _ . + - (it becomes part of paths)")
TARGET = Text(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", "a dotted path to a class, module.Class")
FRACTION = Num(0.0, 1.0, hi_open=True)
VAL_FRACTION = Noted(FRACTION, "the part of the training split held out for validation")
SEED = Int(0, 2 ** 32 - 1)
# A learning rate is multiplied into float32 tensors: above float32's largest value it overflows there (a
# traceback at the first step); below it, a rate that makes training diverge fails the run with the step.
LR = Num(0.0, 3.4028234663852886e38, lo_open=True)


def _stage(min_epochs: int) -> dict:
    from prune_cli.training.settings import COMPILE_MODES, LR_DECAYS, OPTIMIZERS, PRECISIONS
    return {"epochs": Int(min_epochs, 100_000), "lr": LR, "precision": Choice(PRECISIONS),
            "compile": Noted(AnyOf((Bool(), Choice(COMPILE_MODES))), "reduce-overhead adds CUDA graphs on a GPU"),
            "batch_size": Int(1, 1 << 20), "optimizer": Choice(OPTIMIZERS), "momentum": Num(0.0, 1.0, hi_open=True),
            "weight_decay": Num(0.0, 1.0), "lr_decay": Choice(LR_DECAYS),
            "lr_milestones": ListOf(Num(0.0, 1.0)), "lr_gamma": Num(0.0, 1.0, lo_open=True)}


def top_level() -> dict:
    """The keys of ``conf/config.yaml`` outside the four groups."""
    return {
        "sparsity": Noted(FRACTION, "the fraction of prunable weights that are zero at the end"), "seed": SEED,
        "device": AnyOf((Choice(("auto", "cpu", "cuda")), Text(r"cuda:\d+", "cuda:N"))),
        "threads": AnyOf((Choice(("auto",)), Int(1, 1024))),
        "gpu_memory_fraction": Noted(AnyOf((Choice(("auto",)), Num(0.0, 1.0, lo_open=True))),
                                     "the share of the GPU's memory a run may hold; auto: 1/n_jobs in a joblib sweep"),
        "progress": AnyOf((Choice(("auto",)), Bool())),
        "eval_batch_size": Int(1, 1 << 20),
        "matmul_precision": Noted(Choice(("auto", "highest", "high", "medium")),
                                  "fp32 matrix products; auto: high (TF32) on a GPU, highest on the CPU"),
        "dry_run": Bool(),
        "objective": Noted(Optional_(Choice(("val_accuracy", "sparsity_at_budget"))),
                           "what a sweeper (hydra/sweeper=optuna) maximises, on validation data"),
        "objective_budget": Num(0.0, 1.0),
        "weights": Optional_(Noted(Text(), "a path to trained dense weights: a state_dict or a pruned.pt")),
        "reference": Free(),
        "train": _stage(1),
        "finetune": {**_stage(0),
                     "on": Noted(Choice(("shrunk", "masked")), "what a structured result fine-tunes: its smaller "
                                 "model or the full-size masked one"),
                     "distill": Noted(Bool(), "fine-tune against the dense model's logits"),
                     "temperature": Num(0.0, 1000.0, lo_open=True), "alpha": Num(0.0, 1.0)},
        "cache": {"enabled": Bool(), "dir": Text()},
        "checkpoint": {"every_s": Num(0.0, 1e9)},
        "measure": {"latency": Bool(), "latency_budget_s": Num(0.0, 3600.0, lo_open=True),
                    "batch_sizes": ListOf(Int(1, 65_536), min_len=1, max_len=8)},
        "export": {"sparse": Bool(), "min_sparsity": Num(0.0, 1.0)},
        "logger": Noted(Optional_(Free(mapping=True)), "loggers by name: csv, tensorboard, mlflow"),
        "quantize": {"name": Choice(("none", "int8_dynamic", "int8_weight_only", "int8_static"))},
    }


_TORCHVISION_SET = {"name": NAME, "root": Text(), "download": Bool(), "val_fraction": VAL_FRACTION, "split_seed": SEED,
                    "augment": Optional_(Bool()), "in_memory": Bool(), "workers": Int(0, 256)}
_OWN_SET = {"name": NAME, "val_fraction": VAL_FRACTION, "split_seed": SEED, "augment": Optional_(Bool()),
            "in_memory": AnyOf((Choice(("auto",)), Bool())), "memory_mb": Num(0.0, 1e9), "workers": Int(0, 256)}
_SPLIT = Noted(Optional_(Free(mapping=True)), "a {_target_: module.factory, ...arguments} building a Dataset")
# The keys each kind of dataset takes; which dataset is which kind is registered once, in prune_cli/data.
DIGITS_SET = {"name": NAME, "test_fraction": Num(0.0, 1.0, lo_open=True, hi_open=True), "split_seed": SEED,
              "val_fraction": VAL_FRACTION}
SYNTHETIC_SET = {"name": NAME, "shape": ListOf(Int(1, 4096), 3, 3), "num_classes": Int(2, 100_000),
                 "train_size": Int(1, 10_000_000), "test_size": Int(1, 10_000_000), "noise": Num(0.0, 100.0),
                 "split_seed": SEED, "val_fraction": VAL_FRACTION}
TORCHVISION_SET = _TORCHVISION_SET
IMAGEFOLDER_SET = {**_OWN_SET, "root": Optional_(Text()), "channels": Optional_(Int(1, 3)),
                   "image_size": Optional_(AnyOf((Int(1, 65536), ListOf(Int(1, 65536), 2, 2))))}
CUSTOM_SET = {**_OWN_SET, "train": _SPLIT, "test": _SPLIT, "val": _SPLIT, "num_classes": Optional_(Int(2, 10_000_000)),
              "version": Noted(Optional_(AnyOf((Text(), Int()))), "change it when the data changes: the dense "
                               "cache keys on the config, not on what the factories return")}

# Keys every strategy, schedule and model config has, whatever its class.
GROUP_KEYS = {"strategy": {"_target_": TARGET, "name": NAME}, "schedule": {"_target_": TARGET, "name": NAME},
              "model": {"_target_": TARGET, "name": NAME, "pretrained": Bool()}}
# Model constructor arguments the dataset supplies: never config keys.
FROM_DATA = ("input_shape", "num_classes", "mean", "std")
WIDTH = Num(0.0, 64.0, lo_open=True)  # a model's width multiplier (compress searches it)


# --------------------------------------------------------------------------------------------- checking

def _fail(key: str, value, spec: Spec):
    raise UsageError(f"{key}={value!r}: must be {spec.describe()}")


def check_section(prefix: str, values: Any, schema: Mapping[str, Any], what: str) -> None:
    """Every key of ``values`` is in ``schema`` and accepted by its spec; nested tables recurse."""
    if not isinstance(values, dict):
        raise UsageError(f"{prefix}={values!r}: must be a mapping of {what} keys ({', '.join(schema)})")
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise UsageError(f"{full}={value!r}: unknown key; {what} takes {', '.join(sorted(schema))}")
        spec = schema[key]
        if isinstance(spec, dict):
            check_section(full, value, spec, full)
        elif not spec.accepts(value):
            _fail(full, value, spec)


def class_schema(cls, skip: Sequence[str] = ()) -> dict:
    """The keys a class takes, merged along its bases: each class's ``config_schema``, or, for a class that
    declares none but has a constructor of its own, the keys that constructor names (its ``**kwargs`` go on
    to the base classes, whose keys are merged in too)."""
    merged: dict = {}
    for klass in reversed(getattr(cls, "__mro__", (cls,))):
        if "config_schema" in vars(klass):
            merged.update(vars(klass)["config_schema"])
        elif "__init__" in vars(klass) and not str(klass.__module__).startswith(("torch", "builtins")):
            for key, spec in _from_signature(vars(klass)["__init__"]).items():
                merged.setdefault(key, spec)  # a declared table is never loosened by a signature
    if not merged and not isinstance(cls, type):
        merged = _from_signature(cls)  # a factory function
    return {k: v for k, v in merged.items() if k not in skip}


def _from_signature(function) -> dict:
    """Keys from a constructor's named parameters; a default that is a bool, int, float or str sets the type."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return {}
    schema = {}
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        default = p.default
        schema[p.name] = (Bool() if isinstance(default, bool) else Int() if isinstance(default, int) else
                          Num() if isinstance(default, float) else Text() if isinstance(default, str) else Free())
    return schema


def resolve_target(target: str, group: str):
    """The class (or factory) a config's ``_target_`` names, imported; one line when there is none."""
    import importlib
    module_name, _, class_name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise UsageError(f"{group}._target_={target}: no such class (is its module importable from here?)") \
            from None


def check_class_group(group: str, values: dict) -> None:
    """A strategy, schedule or model config: its common keys, then the keys its ``_target_`` class takes."""
    common = GROUP_KEYS[group]
    target = values.get("_target_")
    if not TARGET.accepts(target):
        _fail(f"{group}._target_", target, TARGET)
    cls = resolve_target(target, group)
    schema = class_schema(cls, skip=FROM_DATA if group == "model" else ())
    schema.update(common)  # every class's name and target obey the group's rule
    check_section(group, values, schema, f"{group}={values.get('name', target)}")


def check_config(cfg: Mapping, datasets: Mapping[str, Mapping]) -> None:
    """The whole run config (resolved, plain), before any work; ``datasets``: each registered dataset's keys
    (``prune_cli.data.DATASETS``, passed in so that this module needs nothing from the data package)."""
    groups = {"model", "dataset", "strategy", "schedule"}
    top = top_level()
    rest = {k: v for k, v in cfg.items() if k not in groups}
    check_section("", rest, top, "the config")
    for group in sorted(groups):
        if group not in cfg:
            raise UsageError(f"{group}: missing from the config")
    dataset = cfg["dataset"]
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str) or dataset["name"] not in datasets:
        name = dataset.get("name") if isinstance(dataset, dict) else dataset
        raise UsageError(f"dataset.name={name!r}: unknown dataset; built-in: {', '.join(datasets)}")
    check_section("dataset", dataset, datasets[dataset["name"]], f"dataset={dataset['name']}")
    for group in ("model", "strategy", "schedule"):
        check_class_group(group, cfg[group])
    missing = [f"{section}.{key}" for section, table in top.items() if isinstance(table, dict)
               for key in table if key not in cfg.get(section, {})]
    if missing:
        raise UsageError(f"{missing[0]}: missing from the config (it has a default in conf/config.yaml)")
