"""The house stays true (issue 36, item 4): no import cycle among evalfleet's modules.

Every `import` and `from ... import` counts, wherever it stands: at the top, inside a function (a cycle there
works only as long as nobody moves the import up), and under `if TYPE_CHECKING:` (a cycle there is still a
tangle of concerns). Relative imports are resolved; each import names the longest module that exists (`from
evalfleet.data import load` is the module `evalfleet.data.load`, `from evalfleet.data.load import load_samples`
the same module). A cycle is a strongly connected component of more than one module (the review's appendix,
/work/shared/REVIEW.md, as a test). Imports through `importlib` by a string and the implicit import of a
module's parent packages are not counted: package-level cycles are another measure.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_graph(src: Path, package: str = "evalfleet") -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every module of `package` under `src`."""
    mods: dict[str, tuple[Path, bool]] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)

    def longest(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in mods:
            parts.pop()
        return ".".join(parts) or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]  # what a relative import is relative to
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                target = longest(name) if name == package or name.startswith(package + ".") else None
                if target is not None and target != mod:
                    edges[mod].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def described(found: list[list[str]], edges: dict[str, set[str]]) -> str:
    """Each cycle's modules and the imports that tie them, for the failure message."""
    lines = []
    for component in found:
        lines.append(f"cycle of {len(component)}: {' <-> '.join(component)}")
        lines += [f"    {m} imports {t}" for m in component for t in sorted(edges[m]) if t in component]
    return "\n".join(lines)


def test_evalfleet_has_no_import_cycle():
    edges = module_graph(SRC)
    assert len(edges) > 50 and "evalfleet.run" in edges  # the graph is the real one
    found = cycles(edges)
    print(described(found, edges) or "no import cycle")
    assert not found, "import cycles among evalfleet modules:\n" + described(found, edges)


def test_the_guard_finds_a_cycle_through_a_function_level_and_a_type_checking_import(tmp_path):
    """The same check on a small package: it fails where it should, and only there."""
    pkg = tmp_path / "evalfleet"
    (pkg / "data").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "records.py": "X = 1\n",
        "data/__init__.py": "",
        "data/datasets.py": "from evalfleet.records import X\n\ndef load():\n    from .named import named\n",
        "data/named.py": "from typing import TYPE_CHECKING\nfrom . import images\nif TYPE_CHECKING:\n"
                         "    from evalfleet.data.datasets import load\n",
        "data/images.py": "import os\nimport evalfleet.records\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    edges = module_graph(tmp_path)
    assert edges["evalfleet.data.named"] == {"evalfleet.data.images", "evalfleet.data.datasets"}
    found = cycles(edges)
    assert found == [["evalfleet.data.datasets", "evalfleet.data.named"]]
    assert "evalfleet.data.named imports evalfleet.data.datasets" in described(found, edges)

    (pkg / "data/named.py").write_text("from . import images\n")  # the cycle broken
    assert cycles(module_graph(tmp_path)) == []
    (pkg / "records.py").write_text("def f():\n    from .data import images\n")  # a longer one, via a package
    (pkg / "data/images.py").write_text("from ..data.datasets import load\n")
    assert cycles(module_graph(tmp_path)) == [
        ["evalfleet.data.datasets", "evalfleet.data.images", "evalfleet.data.named", "evalfleet.records"]]


DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def layer_table(doc: Path) -> dict[str, set[str] | None]:
    """docs/architecture.md's layer table: {top-level unit: the units it may import}, None for "(everything)". A row
    names its units in its first column (`records.py`, `config/`), the allowed ones in its last, comma-separated
    (a parenthesis after a name explains it)."""
    import re

    text = doc.read_text(encoding="utf-8")
    rows = text[text.index("## Layers"):].split("\n\n", 2)[1:3]
    table: dict[str, set[str] | None] = {}
    for line in "\n".join(rows).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        units = [u.removesuffix(".py").rstrip("/") for u in re.findall(r"`([^`]+)`", cells[0])]
        allowed = None if cells[2] == "(everything)" else \
            {re.sub(r"\s*\(.*?\)", "", a).strip() for a in re.sub(r"\(.*?\)", "", cells[2]).split(",")} - {""}
        for u in units:
            table[u.removeprefix("__init__") or "__init__"] = allowed
    return table


def unit_of(module: str) -> str:
    """The top-level unit of an evalfleet module: `evalfleet.engine.worker` -> `engine`, `evalfleet` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_layer_table_allows_every_import_the_code_makes():
    """docs/architecture.md says which layers may import which; the code keeps to it."""
    table = layer_table(DOC)
    edges = module_graph(SRC)
    units = {unit_of(m) for m in edges}
    assert units - set(table) == set(), f"units the layer table does not list: {units - set(table)}"
    broken = sorted({(unit_of(m), unit_of(t)) for m, targets in edges.items() for t in targets
                     if unit_of(t) != unit_of(m) and table[unit_of(m)] is not None
                     and unit_of(t) not in table[unit_of(m)] and unit_of(t) != "__init__"})
    assert not broken, "imports the layer table does not allow (unit -> unit): " + ", ".join(f"{a} -> {b}"
                                                                                           for a, b in broken)


def test_the_layer_check_finds_an_import_the_table_does_not_allow(tmp_path):
    doc = tmp_path / "architecture.md"
    doc.write_text("## Layers\n\nintro\n\n| folder | concern | may import |\n|---|---|---|\n"
                   "| `records.py` | records | scoring (its type) |\n| `scoring/` | scores | records |\n"
                   "| `cli/` | commands | (everything) |\n\nafter\n")
    table = layer_table(doc)
    assert table == {"records": {"scoring"}, "scoring": {"records"}, "cli": None}
    assert "store" not in table["records"]  # records -> store would be reported
