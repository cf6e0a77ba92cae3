"""Checkpoints: written as plain containers, read only with ``weights_only=True``.

``pruned.pt`` holds ``{"state_dict", "masks", "model", "config", "report"}`` (and ``"shrunk"`` when a
structured result was physically shrunk). ``quantized.pt`` (``quantize=int8_*``) holds ``{"quantized":
{"method", "library", "state_dict"}, "model", "config", "report"}``. ``load_checkpoint``
rebuilds either module from the spec alone.
"""
from __future__ import annotations

from typing import Sequence

from prune_cli.storage.atomic import atomic_torch_save
from prune_cli.storage.safe_load import safe_load
from prune_cli.errors import UsageError

FORMAT_VERSION = 1


def save_checkpoint(path, *, state_dict, masks, spec, config, report, shrunk=None) -> None:
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "masks": masks,
        "model": spec,
        "config": config,
        "report": report,
    }
    if shrunk is not None:
        payload["shrunk"] = shrunk
    atomic_torch_save(payload, path)


def save_quantized(path, quantized, *, spec, config, report) -> None:
    payload = {"format_version": FORMAT_VERSION,
               "quantized": {"method": quantized.method, "library": quantized.library,
                             "state_dict": quantized.model.state_dict()},
               "model": spec, "config": config, "report": report}
    atomic_torch_save(payload, path)


def load_checkpoint(path, map_location="cpu", shrunk: bool = False, sparse: bool = False,
                    trusted: Sequence[str] = (), quantized: bool = False):
    """Rebuild the pruned model (eval mode) from ``pruned.pt``.

    A checkpoint is data: it is read with ``weights_only=True``, and its model is built only from the
    package's own classes or from modules named in ``trusted`` (e.g. ``("mymodels.",)`` for your own model,
    or the ``_target_`` of the config that trained it); any other target is refused with one line.
    ``shrunk=True`` gives the physically smaller model of a structured run; ``sparse=True`` converts Linear
    layers that are at least ``export.min_sparsity`` sparse to CSR (inference only); ``quantized=True`` reads
    ``quantized.pt`` and gives torchao's int8 model, on the CPU.
    """
    from prune_cli.models.spec import build_trusted
    if quantized:
        from prune_cli.measure.quantized import import_torchao
        import_torchao()  # registers its int8 tensor types as safe for weights_only loading
    payload = safe_load(path, "cpu" if quantized else map_location)
    if not isinstance(payload, dict):
        raise UsageError(f"checkpoint {path}: not a prune-cli checkpoint (holds a {type(payload).__name__})")
    for key in ("quantized" if quantized else "state_dict", "model"):
        if key not in payload:
            what = "a quantized checkpoint (quantized.pt)" if quantized else "a prune-cli checkpoint"
            raise UsageError(f"checkpoint {path}: not {what} (no {key!r})")
    model = build_trusted(payload["model"], trusted, where=f"checkpoint {path}")
    if quantized:
        return _rebuild_quantized(path, model, payload["quantized"])
    if shrunk:
        if "shrunk" not in payload:
            raise UsageError(f"checkpoint {path}: holds no shrunk model (structured strategies only)")
        from prune_cli.pruning.shrink import rebuild_shrunk
        model = rebuild_shrunk(model, payload["shrunk"]["shapes"])
        model.load_state_dict(payload["shrunk"]["state_dict"])
    else:
        model.load_state_dict(payload["state_dict"])
    if sparse:
        from prune_cli.measure.csr import to_sparse
        min_sparsity = float(payload.get("config", {}).get("export", {}).get("min_sparsity", 0.8))
        model = to_sparse(model, min_sparsity)
    return model.to(map_location).eval()


def _rebuild_quantized(path, model, info):
    from prune_cli.measure.quantized import METHODS, structure
    if not isinstance(info, dict) or info.get("method") not in METHODS[1:] or not isinstance(info.get("state_dict"), dict):
        raise UsageError(f"checkpoint {path}: its quantized entry names no known method (written before "
                         f"quantization moved to torchao?); the methods are {', '.join(METHODS[1:])}")
    quantized = structure(model, info["method"])
    try:
        quantized.load_state_dict(info["state_dict"], assign=True)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"checkpoint {path}: its int8 weights do not fit the model: {str(err).splitlines()[0]}") \
            from None
    return quantized.eval()
