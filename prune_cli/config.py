"""The run config in one place: compose it (CLI and API alike), instantiate its classes, fingerprint it.

The CLI gets its config from ``@hydra.main``; the API, the dry run's tests and the existing-run guard compose
it here with the same overrides, from the same directory.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from prune_cli.errors import UsageError

# An absolute path works both from the console script and from ``python -m``; a relative one does not.
# prune_cli/conf links to the repository's conf/ (an editable install) or is a copy of it (a wheel).
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

# Knobs that do not change a run's results (the one list): changing one resumes a run (the fingerprint leaves
# them out), the dense cache ignores them, prune-compare does not tell variants apart by them, and a sweep's job
# directories are not named after them. A key is neutral when it is listed or lies under a listed key.
# finetune.on trains the same function either way (to float rounding).
RESULT_NEUTRAL = ("progress", "checkpoint", "device", "cache", "threads", "gpu_memory_fraction", "measure",
                  "dry_run", "eval_batch_size", "finetune.on", "dataset.download", "dataset.workers", "dataset.in_memory", "dataset.memory_mb")


def result_neutral(key: str) -> bool:
    """Whether a dotted config key (``checkpoint.every_s``, ``dataset.download``) is one of ``RESULT_NEUTRAL``."""
    key = str(key).lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL)


def without_neutral(node, prefix: str = ""):
    """A plain config (or part of one, at ``prefix``) without its result-neutral keys."""
    if not isinstance(node, dict):
        return node
    return {k: without_neutral(v, f"{prefix}{k}.") for k, v in node.items() if not result_neutral(f"{prefix}{k}")}


def compose_config(overrides: Sequence[str] = (), config_dir: str | None = None) -> DictConfig:
    """The composed run config (without Hydra's own settings), as ``prune-run`` would see it.

    ``config_dir`` is a user's ``--config-dir``: searched before the package's own configs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    overrides = list(overrides)
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:  # a bad override, an unknown option: one line
        raise UsageError(composition_error(err, overrides)) from None
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def composition_error(err: Exception, overrides: Sequence[str] = ()) -> str:
    """Hydra's override or composition error as one line that says how to fix it: an unknown group option with
    the closest option and the list, an unknown key with the closest keys, a comma list without ``-m`` with
    the flag; anything else as Hydra's first two lines, without the links. ``overrides``: the command's."""
    import difflib
    import re
    text = str(err)
    missing, options = getattr(err, "missing_cfg_file", None), getattr(err, "options", None)
    if missing and "/" in str(missing) and options:  # Hydra's MissingConfigException for `group=option`
        group, _, option = str(missing).rpartition("/")
        close = difflib.get_close_matches(option, [str(o) for o in options], n=1)
        return (f"{group}={option}: no such option; {f'did you mean {close[0]}? ' if close else ''}"
                f"{group} is one of {', '.join(sorted(map(str, options)))}")
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        given = next((o for o in overrides if o.lstrip("~+").partition("=")[0] == key), key)
        close = difflib.get_close_matches(key, _known_keys(overrides), n=3, cutoff=0.7)
        hint = f"did you mean {' or '.join(close)}?" if close else "see every key with prune-run --cfg job"
        return f"{given}: unknown key; {hint}"
    ambiguous = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if ambiguous:
        given = ambiguous.group(1)
        return (f"{given}: a comma list is a sweep: add -m (prune-run -m ... {given}); a list value is written "
                f"with brackets, e.g. {given.partition('=')[0]}=[{given.partition('=')[2]}]")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("See https://", "full_key", "object_type"))]
    override = getattr(err, "override", None)  # Hydra's OverrideParseException names the override
    head = f"{override}: cannot be parsed: " if override else ""
    return f"{head}{'; '.join(lines[:2]) or type(err).__name__}"


def _known_keys(overrides: Sequence[str]) -> list[str]:
    """Every key of the config the command's group choices compose (for "did you mean")."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
    choices = [o for o in overrides if o.partition("=")[0] in groups and "," not in o]
    cfg = None
    for attempt in (choices, []):  # (Hydra directly: compose_config's own errors would come back here)
        try:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose(config_name="config", overrides=attempt)
            break
        except Exception:  # noqa: BLE001 - a suggestion is a courtesy; the default config has the top keys
            continue
        finally:
            GlobalHydra.instance().clear()
    if cfg is None:
        return []
    with open_dict(cfg):
        cfg.pop("hydra", None)

    def leaves(node, prefix=""):
        for key, value in node.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict):
                yield from leaves(value, f"{full}.")
            else:
                yield full
    return list(leaves(OmegaConf.to_container(cfg, resolve=False)))


def instantiate(node: DictConfig, group: str):
    """Build a strategy or schedule from ``_target_`` + parameters, after checking them against its schema;
    constructor errors become one line too."""
    from prune_cli.schema import check_class_group, resolve_target
    params = OmegaConf.to_container(node, resolve=True)
    check_class_group(group, params)
    cls = resolve_target(params.pop("_target_"), group)
    try:
        return cls(**params)
    except TypeError as err:
        raise UsageError(f"{group}: {err}") from None
    except ValueError as err:
        message = str(err)
        if not message.startswith(f"{group}."):  # e.g. int('abc') inside a constructor: name the settings
            settings = ", ".join(f"{group}.{k}={v}" for k, v in params.items() if k != "name")
            message = f"{group}: {message} (settings: {settings})"
        raise UsageError(message) from None


def resolve_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={name}: no CUDA GPU is available here; use device=cpu or device=auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


PROCESSES = "(processes)"  # the fingerprint's entry for the world size; no config key can have this name


def fingerprint(cfg: DictConfig, leave_out: tuple = ()) -> str:
    """What identifies a run for resuming: the whole config except knobs that do not change results, and the
    number of processes of a run across several (torchrun): their gradients average in another order, so a
    run started with 2 is not continued with 1 or 4."""
    plain = without_neutral(OmegaConf.to_container(cfg, resolve=True))
    import prune_cli.distributed as distributed
    if distributed.launched():
        plain[PROCESSES] = distributed.world_size()
    for key in leave_out:
        plain.pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def variant(cfg: DictConfig) -> str:
    """Runs that differ only in seed and sparsity share a variant: prune-compare averages within one."""
    return fingerprint(cfg, leave_out=("seed", "sparsity", PROCESSES))[:8]


def plain(node):
    """A config node as plain Python data (resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
