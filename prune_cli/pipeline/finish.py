"""The last stage: measure the final model, save ``pruned.pt``, then write the report (last, so that
``status: completed`` means everything else is on disk)."""
from __future__ import annotations

from omegaconf import OmegaConf

from prune_cli.config import variant
from prune_cli.measure.final import measure_final
from prune_cli.models import build
from prune_cli.report.build import build_report
from prune_cli.report.files import write_report
from prune_cli.storage.checkpoint import save_checkpoint
from prune_cli.storage.run_dir import remove_leftovers


def finish(exp) -> dict:
    if exp.state.weights_pending:
        raise RuntimeError("the loop never restored the saved weights of the run it resumed")
    measured = measure_final(exp.model, masks=exp.masks, structured=exp.record.structured,
                             compressed=exp.record.compress is not None, example=exp.example, test=exp.data.test,
                             device=exp.device, dense_twin=_dense_twin(exp), measure_cfg=exp.cfg.get("measure", {}),
                             export_cfg=exp.cfg.get("export", {}))
    state_dict = {k: v.detach().cpu() for k, v in exp.model.state_dict().items()}
    extra = {"fingerprint": exp.fingerprint, "variant": variant(exp.cfg), "device": str(exp.device),
             "threads": exp.threads, "run_dir": str(exp.run_dir.resolve()),
             "checkpoint_saves": {"count": exp.state.saves, "seconds": exp.state.save_seconds}}
    report = build_report(exp.record, state_dict=state_dict, prunable=exp.prunable, ignored=exp.ignored,
                          parameters={name for name, _ in exp.model.named_parameters()}, measured=measured,
                          target=float(exp.cfg.sparsity), run=extra)
    path = exp.run_dir / "pruned.pt"
    save_checkpoint(path, state_dict=state_dict, masks=exp.masks.cpu_state() if exp.masks else {}, spec=exp.spec,
                    config=OmegaConf.to_container(exp.cfg, resolve=True), report=report,
                    shrunk=measured.get("shrunk_payload"))
    report["size_bytes"]["checkpoint"] = path.stat().st_size
    write_report(exp.run_dir, report)
    exp.state.remove()
    remove_leftovers(exp.run_dir, completed=True)
    return report


def _dense_twin(exp):
    """A dense model of the same architecture at full width, timed beside the result for fair speed-ups."""
    spec = {"target": exp.spec["target"], "kwargs": dict(exp.spec["kwargs"])}
    spec["kwargs"].pop("width", None)
    return build(spec).to(exp.device).eval()
