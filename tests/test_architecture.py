"""The package's shape: layers that only look down, a command layer that alone parses arguments and prints, sampling
without training code, and modules small enough to read.

The import graph is read from the source (every ``import``/``from`` of a ``trade_md`` module, at any depth in the
file, so an import hidden inside a function counts too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trade_md"
MAX_LINES = 420
"""About 400: a module longer than this must say why in the first lines of its docstring (``longer than 400 lines
because``)."""
TRAINING_MODULES = ("trade_md.trainer", "trade_md.objectives", "trade_md.config", "trade_md.train", "trade_md.recipe")
LEGACY_CHECKPOINT = Path(__file__).resolve().parent / "data" / "legacy_checkpoint"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Names of the modules ``path`` imports (absolute, resolved from relative imports)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {target for target in _imports(path, name) if target in modules and target != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None. A package's ``__init__`` importing its own
    submodules is not a cycle by itself (``a`` -> ``a.b`` edges are ignored)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_detection_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_has_no_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_command_layer_parses_arguments_and_prints() -> None:
    offenders = []
    for name, path in _modules().items():
        if name == "trade_md.cli" or name.startswith("trade_md.cli."):
            continue
        tree = ast.parse(path.read_text())
        imported = _imports(path, name)
        if "argparse" in imported:
            offenders.append(f"{name} imports argparse")
        if name != "trade_md.progress" and any(m == "tqdm" or m.startswith("tqdm.") for m in imported):
            offenders.append(f"{name} imports tqdm (report progress through trade_md.progress)")
        if any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
               for node in ast.walk(tree)):
            offenders.append(f"{name} calls print")
    assert not offenders, "; ".join(offenders)


def test_sampling_does_not_load_training_code() -> None:
    """Loading a trained model and drawing weighted samples (the legacy fixture: a checkpoint with a training
    config) leaves every training module unloaded."""
    code = ("import sys\n"
            "from trade_md.sampler import Sampler\n"
            f"with Sampler.from_checkpoint({str(LEGACY_CHECKPOINT)!r}, platform='Reference') as sampler:\n"
            "    samples = sampler.sample(64, 450.0, progress=False)\n"
            "assert len(samples.weights) == 64\n"
            f"print([m for m in sys.modules if m.startswith({TRAINING_MODULES!r})])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"sampling loaded training modules: {result.stdout}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_is_short_or_says_why(name: str) -> None:
    path = _modules()[name]
    lines = path.read_text().splitlines()
    if len(lines) <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    head = " ".join(docstring.splitlines()[:6]).lower()
    assert "longer than 400 lines because" in head, (
        f"{name} has {len(lines)} lines; split it, or start its docstring with why it is longer than 400 lines")
