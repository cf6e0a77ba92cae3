"""The package's shape as a checked property: no import cycles (module-level or lazy), one loop per schedule
kind chosen without name checks, and the public extension points exported at the top."""
import ast
from pathlib import Path

import pytest

import prune_cli

PACKAGE = Path(prune_cli.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every prune_cli module ``path`` imports, at module level or inside a function."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in known and name != own:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) for name, path in found.items()}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return cycles


def test_no_import_cycles_anywhere_in_the_package():
    assert find_cycles(graph()) == []


def test_lazy_imports_count_and_cycles_are_found():
    """The checks above can fail: an import inside a function is an edge, and a loop through it is a cycle."""
    edges = {"prune_cli.a": {"prune_cli.b"}, "prune_cli.b": {"prune_cli.c"}, "prune_cli.c": {"prune_cli.a"},
             "prune_cli.d": {"prune_cli.a"}}
    assert find_cycles(edges) == [["prune_cli.a", "prune_cli.b", "prune_cli.c", "prune_cli.a"]]
    lazy = graph()["prune_cli.app.cli"]  # cli imports the pipeline only inside run_job
    assert "prune_cli.pipeline.experiment" in lazy


def test_pipeline_never_inspects_which_strategy_or_schedule_it_runs():
    """No isinstance, no type() comparison, no .name comparison on strategies or schedules in the pipeline."""
    offenders = []
    for path in (PACKAGE / "pipeline").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            function = getattr(node.func, "id", None) if isinstance(node, ast.Call) else None
            if function in ("isinstance", "type", "getattr", "hasattr") and node.args and (
                    "strategy" in ast.unparse(node.args[0]) or "schedule" in ast.unparse(node.args[0])):
                offenders.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                if ".name" in text and ("strategy" in text or "schedule" in text):
                    offenders.append(f"{path.name}:{node.lineno} {text}")
    assert offenders == []


@pytest.mark.parametrize("name", ["Strategy", "ScoringContext", "Schedule", "load_checkpoint", "run", "compare"])
def test_extension_points_are_exported_at_the_top(name):
    assert name in prune_cli.__all__ and getattr(prune_cli, name) is not None


def test_help_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys; sys.argv = ['prune-run', '--help']\n"
            "from prune_cli.app import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-500:] + out.stderr[-500:]
