"""The import graph: no cycles, and dependencies point one way through the layers below.

Every ``import`` counts, also those inside functions (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks (annotations) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "volseg"

#: Lowest first. A module may import its own layer's modules and lower layers' only. Packages
#: (io, nn, data, inference, training) are one name each: all their modules share its layer.
#: fast_layers and evaluation are the old import paths of inference.fast_layers and
#: training.evaluation (aliases kept for one release).
LAYERS = [
    ["_version", "errors", "lazy", "allocator"],
    ["io"],
    ["config", "runtime"],
    ["nn"],
    ["data", "losses"],
    ["checkpoint", "bundled"],
    ["inference", "fast_layers"],
    ["metrics", "export"],
    ["training", "evaluation"],
    ["cli", "__main__", "__init__"],
]


def _module_name(path: Path) -> str:
    return ".".join(("volseg", *path.relative_to(PACKAGE).with_suffix("").parts))


def _imports(tree: ast.AST) -> set[str]:
    """The volseg modules ``tree`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "volseg":
            if node.module != "volseg":  # "from volseg import io" imports volseg.io, not the top
                found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "volseg")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the package (``pkg.__init__`` named ``pkg``)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[_module_name(path).removesuffix(".__init__")] = _imports(ast.parse(path.read_text(encoding="utf-8")))
    return {name: {d for d in deps if d in graph and d != name} for name, deps in graph.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_the_import_graph_has_no_cycle():
    graph, state, stack, cycles = import_graph(), {}, [], []

    def walk(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                cycles.append(" -> ".join([*stack[stack.index(child) :], child]))
            elif child not in state:
                walk(child)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_has_a_layer_and_imports_point_down():
    graph = import_graph()
    unplaced = sorted(module for module in graph if _layer(module) is None)
    assert not unplaced, f"modules without a layer in LAYERS: {unplaced}"
    upward = [
        f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})"
        for module, deps in graph.items()
        for dep in sorted(deps)
        if _layer(dep) > _layer(module)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)
