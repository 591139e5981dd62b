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
