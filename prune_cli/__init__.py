"""prune-cli: a runner for neural-network pruning experiments.

Public API (imports are lazy so ``prune-run --help`` does not load torch):
- ``load_checkpoint(path)``: rebuild a pruned model from ``pruned.pt``.
- ``run(overrides=[...], run_dir=None)``: one experiment in this process, returning its report.
- ``compare(paths, out_dir=None)``: the summary table of many runs.
- ``Strategy``, ``ScoringContext``, ``Schedule``: the base classes of your own strategies and schedules
  (docs/extending.md).
"""
__version__ = "0.1.0"

# name -> (module, attribute), imported on first use.
_LAZY = {"Strategy": ("prune_cli.pruning.strategies.base", "Strategy"),
         "ScoringContext": ("prune_cli.pruning.strategies.base", "ScoringContext"),
         "Schedule": ("prune_cli.pruning.schedules", "Schedule")}


def load_checkpoint(path, map_location="cpu", shrunk: bool = False, sparse: bool = False, trusted=(),
                    quantized: bool = False):
    """Rebuild a pruned model from ``pruned.pt`` (or the int8 model from ``quantized.pt``, ``quantized=True``);
    models other than prune-cli's own are built only from modules named in ``trusted`` (a checkpoint is
    data, never a way to run code)."""
    from prune_cli.storage.checkpoint import load_checkpoint as _load
    return _load(path, map_location=map_location, shrunk=shrunk, sparse=sparse, quantized=quantized,
                 trusted=(trusted,) if isinstance(trusted, str) else tuple(trusted))


def run(overrides=(), run_dir=None, config_dir=None):
    from prune_cli.app.api import run as _run
    return _run(list(overrides), run_dir, config_dir=config_dir)


def compare(paths, out_dir=None, **kwargs):
    from prune_cli.comparison import compare as _compare
    return _compare(paths, out_dir=out_dir, **kwargs)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'prune_cli' has no attribute {name!r}")


__all__ = ["load_checkpoint", "run", "compare", "Strategy", "ScoringContext", "Schedule", "__version__"]
