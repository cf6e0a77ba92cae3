"""Only public, maintained APIs of other libraries: the source is scanned for private names and for the modules
torch and Hydra deprecate or keep internal. What prune-cli calls its own private helpers stays private to the
module that defines them (``self._x`` and module-level ``_x`` are fine; another object's ``_x`` is not)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "prune_cli").rglob("*.py"))
# Modules no source may import or name: Hydra's internals, torch's deprecated quantization (torchao replaces it).
FORBIDDEN_MODULES = ("hydra._internal", "torch.ao", "hydra_plugins.hydra_joblib_launcher._core",
                     "joblib.externals.loky")
FORBIDDEN_CALLS = ("os._exit",)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def problems(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            base = node.value
            if _private(node.attr) and not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                found.append(f"{where}: private attribute {ast.unparse(node)}")
            if dotted in FORBIDDEN_CALLS or any(dotted == m or dotted.startswith(m + ".") for m in FORBIDDEN_MODULES):
                found.append(f"{where}: {dotted}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if any(module == m or module.startswith(m + ".") for m in FORBIDDEN_MODULES) \
                        or any(_private(part) for part in module.split(".")):
                    found.append(f"{where}: import of {module}")
            if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("prune_cli"):
                found += [f"{where}: private name {alias.name} from {node.module}"
                          for alias in node.names if _private(alias.name)]
    return found


def test_the_source_uses_only_public_apis():
    found = [line for path in SOURCES for line in problems(path)]
    assert found == []


@pytest.mark.parametrize("snippet, expected", [
    ("from hydra._internal.utils import get_args_parser", "import of hydra._internal.utils"),
    ("import torch.ao.quantization", "import of torch.ao.quantization"),
    ("import os\nos._exit(0)", "private attribute os._exit"),
    ("value = job_return._return_value", "private attribute job_return._return_value"),
    ("from torch.utils._python_dispatch import TorchDispatchMode", "import of torch.utils._python_dispatch"),
    ("import torch\nx = torch.nn.modules.conv._ConvNd", "private attribute torch.nn.modules.conv._ConvNd"),
    ("from torch.nn.modules.utils import _pair", "private name _pair from torch.nn.modules.utils"),
])
def test_the_scan_finds_each_kind_of_private_use(tmp_path, snippet, expected):
    path = tmp_path / "scan_probe.py"  # not in the source tree, which other test processes are reading
    path.write_text(snippet + "\n")
    assert any(expected in line for line in problems(path)), problems(path)


def test_hydra_uses_its_own_sweeper_and_the_stock_joblib_launcher():
    from prune_cli.config import compose_config
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from prune_cli.config import CONFIG_DIR
    compose_config([])  # the package's config composes
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert not (ROOT / "hydra_plugins").exists()
