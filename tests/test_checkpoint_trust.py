"""A checkpoint is data, never a way to run code: load_checkpoint builds only trusted model classes."""
import sys
import textwrap

import pytest
import torch
from torch import nn

import prune_cli
from prune_cli.errors import UsageError


def save(path, target, kwargs, state_dict=None):
    torch.save({"state_dict": state_dict or {}, "masks": {}, "model": {"target": target, "kwargs": kwargs},
                "config": {}, "report": {}}, path)
    return path


@pytest.mark.parametrize("target,kwargs", [
    ("os.system", {"command": "touch {marker}"}),
    ("subprocess.call", {"args": ["touch", "{marker}"]}),
    ("builtins.exec", {"source": "open('{marker}', 'w')"}),
    ("prune_cli.models.spec.build", {"spec": {"target": "os.system", "kwargs": {"command": "touch {marker}"}}}),
    ("prune_cli.models.builtin.torch", {}),
])
def test_the_attack_checkpoint_is_refused_and_runs_nothing(tmp_path, target, kwargs):
    marker = tmp_path / "pwned"
    text = {k: (v.format(marker=marker) if isinstance(v, str) else v) for k, v in kwargs.items()}
    if "args" in text:
        text["args"] = [a.format(marker=marker) for a in kwargs["args"]]
    if "spec" in text:
        text["spec"]["kwargs"]["command"] = f"touch {marker}"
    path = save(tmp_path / "evil.pt", target, text)
    with pytest.raises(UsageError) as err:
        prune_cli.load_checkpoint(path)
    assert not marker.exists()
    assert target in str(err.value) and "\n" not in str(err.value)


def test_a_trusted_prefix_does_not_cover_what_its_modules_import(tmp_path, monkeypatch):
    package = tmp_path / "mymodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text("from os import system\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "pwned"
    path = save(tmp_path / "evil.pt", "mymodels.utils.system", {"command": f"touch {marker}"})
    with pytest.raises(UsageError, match="mymodels.utils.system.*refused"):
        prune_cli.load_checkpoint(path, trusted=("mymodels.",))
    assert not marker.exists()


def test_a_custom_model_loads_when_its_module_is_trusted(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""\
        from torch import nn


        class Tiny(nn.Module):
            def __init__(self, hidden=4):
                super().__init__()
                self.fc = nn.Linear(3, hidden)

            def forward(self, x):
                return self.fc(x)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynets", None)
    import mynets
    reference = mynets.Tiny(hidden=5)
    path = save(tmp_path / "tiny.pt", "mynets.Tiny", {"hidden": 5}, reference.state_dict())
    with pytest.raises(UsageError, match="mynets.Tiny"):
        prune_cli.load_checkpoint(path)  # not trusted by default
    for trusted in (("mynets.",), ("mynets",), ("mynets.Tiny",), "mynets"):
        model = prune_cli.load_checkpoint(path, trusted=trusted)
        assert isinstance(model, nn.Module) and not model.training
        assert torch.equal(model.fc.weight, reference.fc.weight)
    with pytest.raises(UsageError):
        prune_cli.load_checkpoint(path, trusted=("mynetsX.",))  # a prefix is a module boundary, not text


def test_a_checkpoint_that_is_not_a_dict_is_one_line(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UsageError, match="not a prune-cli checkpoint"):
        prune_cli.load_checkpoint(path)


def test_a_trusted_module_covers_its_model_classes_not_its_other_functions(tmp_path, monkeypatch):
    (tmp_path / "mytools.py").write_text("def wipe(path):\n    open(path, 'w').write('wiped')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "victim"
    path = save(tmp_path / "evil.pt", "mytools.wipe", {"path": str(marker)})
    with pytest.raises(UsageError, match="mytools.wipe.*refused"):
        prune_cli.load_checkpoint(path, trusted=("mytools.",))
    assert not marker.exists()


def test_the_packages_own_models_take_no_download_and_only_their_keys(tmp_path):
    path = save(tmp_path / "tv.pt", "prune_cli.models.TorchvisionModel",
                {"input_shape": [3, 32, 32], "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
                 "arch": "resnet18", "pretrained": True})
    with pytest.raises(UsageError, match="pretrained weights"):
        prune_cli.load_checkpoint(path)
    path = save(tmp_path / "mlp.pt", "prune_cli.models.MLP",
                {"input_shape": [1, 8, 8], "num_classes": 10, "mean": [0.5], "std": [0.25], "hidden": "abc",
                 "colour": "red"})
    with pytest.raises(UsageError, match=r"mlp.pt: model.hidden='abc': must be a list"):
        prune_cli.load_checkpoint(path)
