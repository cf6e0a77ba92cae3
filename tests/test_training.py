import math

import pytest
import torch
from torch import nn

from prune_cli.data.splits import TensorSplit
from prune_cli.errors import RunFailed
from prune_cli.pruning.masks import Masks
from prune_cli.training.evaluate import evaluate
from prune_cli.training.loop import epoch_generator, fit
from prune_cli.training.settings import StageSettings


def test_lr_decay_is_a_function_of_the_epoch():
    step = StageSettings(epochs=8, lr=0.1, batch_size=4, lr_decay="step", lr_milestones=(0.5, 0.75), lr_gamma=0.1)
    assert [step.lr_at(e) for e in range(8)] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    cosine = StageSettings(epochs=4, lr=1.0, batch_size=4, lr_decay="cosine")
    assert [cosine.lr_at(e) for e in range(4)] == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4))
                                                                 for e in range(4)])
    assert StageSettings(epochs=4, lr=0.3, batch_size=4).lr_at(3) == 0.3


def toy_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 2, 2, generator=g)
    return TensorSplit(x, (x.flatten(1).sum(1) > 2).long())


def test_fit_keeps_masked_weights_at_zero_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    mask = (torch.rand(8, 4) > 0.5).float()
    masks = Masks({"1.weight": mask})
    masks.apply_(model)
    settings = StageSettings(epochs=3, lr=0.5, batch_size=8, optimizer="sgd", momentum=0.9, weight_decay=0.01)
    fit(model, toy_data(), settings, stage="t", seed=0, masks=masks)
    assert bool((model[1].weight[mask == 0] == 0).all())
    assert bool((model[1].weight[mask == 1] != 0).all())


def test_shuffle_order_depends_only_on_seed_and_epoch():
    a = torch.randperm(10, generator=epoch_generator(3, 2))
    b = torch.randperm(10, generator=epoch_generator(3, 2))
    c = torch.randperm(10, generator=epoch_generator(3, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_non_finite_loss_names_stage_epoch_and_step():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    with pytest.raises(RunFailed, match=r"stage 'dense' at epoch 1, step 1"):
        fit(model, toy_data(), StageSettings(epochs=1, lr=0.1, batch_size=8), stage="dense", seed=0)


def test_evaluate_counts_correct_predictions():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts class 0
    data = toy_data()
    assert evaluate(model, data) == float((data.y == 0).float().mean())



def test_stage_settings_defaults_are_the_configs_and_every_key_is_read():
    """Training defaults live in conf/config.yaml; StageSettings' own defaults may not drift from them."""
    import dataclasses
    from omegaconf import OmegaConf
    from prune_cli.config import compose_config
    cfg = compose_config([])
    for stage in ("train", "finetune"):
        node = OmegaConf.to_container(cfg[stage])
        settings = StageSettings.from_cfg(cfg[stage])
        for field in dataclasses.fields(StageSettings):
            expected = tuple(node[field.name]) if field.name == "lr_milestones" else node[field.name]
            assert getattr(settings, field.name) == expected, (stage, field.name)
            if field.default is not dataclasses.MISSING:
                assert field.default == expected, (stage, field.name)
    assert StageSettings.from_cfg(cfg.finetune, epochs=3).epochs == 3
