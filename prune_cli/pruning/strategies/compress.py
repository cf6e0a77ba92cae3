"""Model compression: train a narrower network of the same architecture from scratch.

The width multiplier is searched so the narrow model's prunable weight count is (1 - sparsity) of the dense
one: the equal-size dense baseline every pruning result should beat. With ``distill=true`` it learns from the
dense model's softened logits (Hinton et al. 2015) as well as from the labels.
"""
from __future__ import annotations


from prune_cli.pruning.strategies.base import Strategy
from prune_cli.schema import Bool, Num


class Compress(Strategy):
    name = "compress"
    loop = "smaller_model"

    config_schema = {"distill": Bool(), "temperature": Num(0.0, 1000.0, lo_open=True), "alpha": Num(0.0, 1.0)}

    def __init__(self, distill: bool = False, temperature: float = 4.0, alpha: float = 0.5, **kwargs):
        kwargs.pop("scope", None)
        super().__init__(**kwargs)
        if self.pattern is not None:
            raise ValueError(f"strategy.pattern={self.pattern}: strategy=compress trains a narrower dense model; "
                             f"it has no masks to pattern")
        if self.ignore:
            raise ValueError(f"strategy.ignore={self.ignore}: strategy=compress trains a narrower model of every "
                             f"layer; there is no layer to leave dense (use a pruning strategy)")
        self.distill, self.temperature, self.alpha = bool(distill), float(temperature), float(alpha)

    def describe(self) -> dict:
        return {"name": self.name, "granularity": "model", "distill": self.distill,
                "temperature": self.temperature, "alpha": self.alpha}

    def width(self, model_cfg: dict, info, sparsity: float) -> float:
        """The width multiplier whose model has at most (1 - sparsity) of the dense prunable weights; the run
        and the dry run both ask here. Raises UsageError when narrowing cannot get there."""
        from prune_cli.errors import UsageError
        from prune_cli.schema import resolve_target
        import inspect
        try:
            default = inspect.signature(resolve_target(model_cfg["_target_"], "model")).parameters["width"].default
        except (KeyError, TypeError, ValueError):
            default = None
        if not isinstance(default, float):
            raise UsageError(f"strategy=compress: narrows a model through its constructor's `width` multiplier (a "
                             f"float, 1.0 = as configured), which model={model_cfg.get('name', model_cfg['_target_'])} "
                             f"does not take")
        try:
            return find_width(lambda width: self.prunable_count(model_cfg, info, width), 1.0 - float(sparsity))
        except ValueError as err:
            raise UsageError(f"sparsity={sparsity}: strategy=compress cannot reach it: {err}") from None

    def prunable_count(self, model_cfg: dict, info, width: float) -> int:
        """Prunable weights of the model at ``width``."""
        from prune_cli.models.spec import build, make_spec
        from prune_cli.pruning.masks import prunable_names
        candidate = build(make_spec(model_cfg, info, width))
        params = dict(candidate.named_parameters())
        return sum(params[n].numel() for n in prunable_names(candidate, self.prune_classifier))

    def loss_fn(self, teacher):
        """Cross-entropy (None), or distillation from the dense teacher when ``distill``."""
        if not self.distill:
            return None
        from prune_cli.training.distill import distillation_loss
        return distillation_loss(teacher, self.temperature, self.alpha)


def find_width(count_weights, target_fraction: float, tolerance: int = 64) -> float:
    """Largest width in (0, 1] whose prunable weight count does not exceed target_fraction of the dense one."""
    dense = count_weights(1.0)
    goal = target_fraction * dense
    low, high = 1e-3, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if count_weights(mid) <= goal:
            low = mid
        else:
            high = mid
        if high - low < 1e-4:
            break
    if count_weights(low) > goal:
        # Every layer keeps at least one unit, so some targets cannot be reached by narrowing alone.
        raise ValueError(f"the narrowest model removes at most {1 - count_weights(low) / dense:.4f} of the "
                         f"weights")
    return low
