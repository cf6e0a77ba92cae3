"""prune-cli: a runner for neural-network pruning experiments.

Public API (imports are lazy so ``prune-run --help`` does not load torch):
- ``load_checkpoint(path)``: rebuild a pruned model from ``pruned.pt``.
- ``run(overrides=[...], run_dir=None)``: one experiment in this process, returning its report.
- ``compare(paths, out_dir=None)``: the summary table of many runs.
"""
__version__ = "0.1.0"


def load_checkpoint(path, map_location="cpu", shrunk: bool = False, sparse: bool = False):
    from .checkpoint import load_checkpoint as _load
    return _load(path, map_location=map_location, shrunk=shrunk, sparse=sparse)


def run(overrides=(), run_dir=None):
    from .api import run as _run
    return _run(list(overrides), run_dir)


def compare(paths, out_dir=None, **kwargs):
    from .comparison import compare as _compare
    return _compare(paths, out_dir=out_dir, **kwargs)


__all__ = ["load_checkpoint", "run", "compare", "__version__"]
