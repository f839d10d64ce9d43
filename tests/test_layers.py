"""The layer rule of docs/design.md: every import of diffiqt points downwards, and no stage imports another
that imports it back.

Each module of src/diffiqt belongs to a stage (its package, or itself for a top-level module); the stages
lie in the rows of :data:`LAYERS`, top first, as the boxes of design.md's drawing do. A module may import
its own stage and any stage of a lower row; a higher row, or a neighbour in its own row, is a violation.
Imports are read with ``ast``, those inside functions and ``if TYPE_CHECKING`` included; nothing is
imported, so the test needs neither torch nor the package's dependencies.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "diffiqt"
DESIGN = ROOT / "docs" / "design.md"

# Top row first; stages in one row may not import each other. Mirrors the drawing in docs/design.md.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli", "__init__"),
    ("bench",),
    ("training",),
    ("evaluation",),
    ("inference",),
    ("models",),
    ("diffusion", "nets", "simulation", "preprocess"),
    ("anatomy",),
    ("imaging",),
    ("config",),
    ("errors",),
]
ROW = {stage: row for row, stages in enumerate(LAYERS) for stage in stages}
# ``from diffiqt import __version__`` is allowed anywhere: importing the package runs importlib.metadata only
# (the API's names are imported lazily, on first use).
PACKAGE_METADATA = {"__version__"}


def module_name(path: Path) -> str:
    """diffiqt.x.y of a file under src/diffiqt (a package's __init__.py is the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def stage_of(module: str) -> str:
    """The stage of diffiqt.STAGE[.rest]; the package itself is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, str]]:
    """(imported diffiqt module, the import as written) for every import in the file, nested ones too."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [
                (alias.name, f"import {alias.name}") for alias in node.names if alias.name.split(".")[0] == "diffiqt"
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from .. import z
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "diffiqt":
                continue
            for alias in node.names:
                written = f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                if source == "diffiqt" and alias.name in PACKAGE_METADATA:
                    continue
                # from diffiqt.x import y: y is a module if one of that name exists, else a name of diffiqt.x
                target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                found.append((target, written))
    return found


def test_every_import_points_down_the_layers():
    known = set(modules())
    unplaced = sorted({stage_of(m) for m in known} - set(ROW))
    assert not unplaced, f"stages missing from LAYERS (and docs/design.md): {unplaced}"
    violations = []
    for module, path in modules().items():
        own = stage_of(module)
        for target, written in imports(path, known):
            other = stage_of(target)
            if other != own and ROW[other] <= ROW[own]:
                where = "a higher layer" if ROW[other] < ROW[own] else "a neighbour in its own layer"
                violations.append(f"{path.relative_to(PACKAGE.parent)}: {written}  ({own} -> {other}: {where})")
    assert not violations, "imports against the layers of docs/design.md:\n" + "\n".join(violations)


def stage_graph() -> dict[str, dict[str, str]]:
    """stage -> {imported stage: one import that makes the edge, as ``file: import``}."""
    known = set(modules())
    graph: dict[str, dict[str, str]] = {}
    for module, path in modules().items():
        own = stage_of(module)
        for target, written in imports(path, known):
            other = stage_of(target)
            if other != own:
                graph.setdefault(own, {}).setdefault(other, f"{path.relative_to(PACKAGE.parent)}: {written}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of stages [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_two_stages_import_each_other():
    graph = stage_graph()
    cycle = find_cycle(graph)
    assert cycle is None, (
        "import cycle between stages: "
        + " -> ".join(cycle)
        + "\n"
        + "\n".join(graph[a][b] for a, b in zip(cycle, cycle[1:]))
    )


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "d": {"a": ""}}) is None


def drawing_rows() -> list[tuple[str, ...]]:
    """The stages of each box of design.md's layer drawing, top first: the names that start a line."""
    text = DESIGN.read_text()
    section = text[text.index("## Layers") :]
    block = section[section.index("```") + 3 :]
    block = block[block.index("\n") + 1 : block.index("```")]
    rows: list[list[str]] = [[]]
    for line in block.splitlines():
        if line.strip().startswith("▼"):
            rows.append([])
        elif line and not line[0].isspace():
            rows[-1].append(re.sub(r"(/|\.py)$", "", line.split()[0]))
    return [tuple(row) for row in rows]


def test_the_table_is_the_drawing_of_design_md():
    assert [set(row) for row in drawing_rows()] == [set(row) for row in LAYERS]
