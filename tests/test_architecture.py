"""The architecture of README's "What is inside": modules import downward only (the graph of ddpm's
imports, function-level ones included, has no cycle), and the math core imports nothing of ours."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm"
CORE = {"schedules", "diffusion", "unet", "spacing"}


def imports() -> dict[str, set[str]]:
    """Each module of ddpm → the ddpm modules it imports anywhere in it."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddpm"):
                found |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ddpm.")}
        graph[path.stem] = found - {path.stem}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph, if there is one (depth-first search)."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target] if target in path else [module, target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_the_math_core_imports_nothing_of_ours() -> None:
    graph = imports()
    assert {module: graph[module] for module in CORE} == {module: set() for module in CORE}


def test_modules_import_downward_only() -> None:
    assert cycle(imports()) is None


def test_tracking_is_reached_only_from_the_stages_and_the_cli() -> None:
    graph = imports()
    users = {module for module, targets in graph.items() if "tracking" in targets}
    assert users <= {"cli", "train", "sample", "evaluate", "sweep", "report"}, users


def test_the_cycle_finder_finds_one() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
