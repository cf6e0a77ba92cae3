"""``prune-search``: the highest sparsity whose fine-tuned validation accuracy stays within ``search.max_drop``
of the dense model's, for each strategy given.

    prune-search model=lenet300 strategy=magnitude,gradient search.max_drop=0.01

Every probe is an ordinary ``prune-run`` run directory under the search directory, run in this process
through ``prune_cli.run`` (the dense model and the first-round scores come from the caches after the first
probe). Choices are made on the validation split only (``dataset.val_fraction`` defaults to 0.1 here); the
test accuracy is reported for the chosen runs alone. A killed search resumes with the same ``search.dir``:
finished probes are read back, not rerun.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from prune_cli.errors import UsageError

log = logging.getLogger("prune_cli.search")


def help_text() -> str:
    import dataclasses
    import inspect
    from prune_cli.app.help_text import render
    from prune_cli.search.run import Settings
    # The meanings are the comments beside the fields of Settings: one home for them.
    source = inspect.getsource(Settings)
    meanings = {line.split(":")[0].strip(): line.split("#", 1)[1].strip()
                for line in source.splitlines() if "#" in line and ":" in line.split("#")[0]}
    rows = [(f"search.{f.name}", repr(f.default), meanings.get(f.name, ""))
            for f in dataclasses.fields(Settings) if f.name != "directory"]
    rows.append(("search.dir", "outputs/searches/<time>_<pid>", "where the probes and search.md go"))
    return render(__doc__, rows, "Every other key=value is a prune-run override (model=, dataset=, train.*, ...); "
                                 "strategy=a,b lists the strategies to search (strategy=auto screens every family).")


def main(argv: Sequence[str] | None = None) -> int:
    from prune_cli.search.output import write_outputs
    from prune_cli.search.run import parse_args, search
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("prune_cli").setLevel(logging.WARNING)  # the probes' own per-epoch lines stay quiet
    log.setLevel(logging.INFO)                                # one line per probe
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(help_text())
        return 0
    try:
        settings, overrides, strategies = parse_args(args)
        result = search(settings, overrides, strategies)
        write_outputs(result, settings.directory)
    except UsageError as err:
        print(f"prune-search: {err}", file=sys.stderr)
        return 2
    best = result["best"]
    if best:
        tied = result.get("tied_with") or []
        head = f"best {best['strategy']}" if not tied else f"a tie: {best['strategy']} (with {', '.join(tied)})"
        print(f"prune-search: {head} at sparsity {best['sparsity']:.4f} (validation drop "
              f"{100 * best['val_drop']:.2f} points, test accuracy {100 * best['test_accuracy']:.2f}%); "
              f"{settings.directory}/search.md")
    else:
        print(f"prune-search: no strategy stays within search.max_drop={settings.max_drop} even at "
              f"search.min_sparsity={settings.min_sparsity}; {settings.directory}/search.md")
    return 0
