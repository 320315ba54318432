"""The shape of the code: no import cycles, the app never imports the lab, Flower only in
the glue, and the method-agnostic rooms never name a method's details."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sfdd_flwr", "sfdd_lab")
# The app modules that translate between Flower and the core (and Flower's robust rules).
FLOWER_GLUE = {
    "sfdd_flwr.server_app", "sfdd_flwr.client_app", "sfdd_flwr.strategy", "sfdd_flwr.protocol",
    "sfdd_flwr.aggregators.robust",
}
# Rooms that must hold no method's details: they talk to the method interface only.
METHOD_AGNOSTIC = ("strategy.py", "runs/recorder.py", "runs/artifacts.py", "client_app.py", "server_app.py",
                   "protocol.py")
METHOD_DETAILS = re.compile(
    r"matching|distill|gradient|\bDC\b|velocity|momentum|outer.loop|inner.loop|batch.real|lr.img|synthetic_images"
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the project that `name` imports anywhere (functions included), except
    under `if TYPE_CHECKING:`, resolved to the most specific module named."""
    tree = ast.parse(path.read_text())
    skipped = {id(child) for node in ast.walk(tree) if _type_checking_only(node) for child in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_app_or_the_lab_is_part_of_an_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["sfdd_flwr.server_app"], "the graph must see the package"
    assert cycles(graph) == []


def test_the_app_never_imports_the_lab():
    offenders = {name: sorted(t for t in targets if t.startswith("sfdd_lab"))
                 for name, targets in import_graph().items() if name.startswith("sfdd_flwr")}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_flower_is_imported_only_by_the_glue():
    importers = set()
    for name, path in modules().items():
        if not name.startswith("sfdd_flwr"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "flwr" or n.startswith("flwr.") for n in names):
                importers.add(name)
    assert importers == FLOWER_GLUE


def test_the_method_agnostic_rooms_name_no_method_detail():
    for relative in METHOD_AGNOSTIC:
        text = (ROOT / "sfdd_flwr" / relative).read_text()
        found = sorted({match.group(0) for match in METHOD_DETAILS.finditer(text)})
        assert not found, f"{relative} names {found}"
