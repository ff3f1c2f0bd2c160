"""The package's import structure: no cycle between subpackages, no reach into another subpackage's privates.

What counts
-----------
* **Units.** Each top-level subpackage of ``soscope`` (``soscope.io``, ``soscope.model``, ...) is one unit,
  and so is each top-level module (``soscope._enhance``, ``soscope._settings``, ...). The package's own
  ``soscope/__init__.py`` is the lazy public facade, not a unit: it may import anything.
* **Imports.** Every ``import`` / ``from ... import`` statement anywhere in a module: at module level, inside
  functions and methods (soscope imports heavy dependencies lazily, and a function-level import still makes
  one unit depend on another), and under ``if TYPE_CHECKING:``. Relative imports are resolved against the
  importing module. ``from soscope import X`` resolves ``X`` to the unit that defines it (a subpackage, a
  top-level module, or a lazily exported name of ``soscope/__init__.py``).
* **Cycles.** An edge ``A → B`` for each import in unit ``A`` of something in unit ``B`` (``A != B``); the
  graph of units must have no cycle. The same holds between individual modules (see ``_module_edges``).
* **Privates.** A unit may not import a private module (a path component starting with ``_``, other than
  ``__init__``) or a private name (``from x import _y``) of *another subpackage*: that subpackage's
  ``__init__`` exports what others may use. Top-level private modules (``soscope._errors``,
  ``soscope._settings``, ``soscope._constants``, ``soscope._progress``, ...) are shared by design and may be
  imported by any unit, but their own private names may not.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "soscope"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _lazy_exports() -> dict[str, str]:
    """Names ``soscope/__init__.py`` exports lazily (``_LAZY = {name: (module, attr)}``) → their module."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets
        ):
            lazy = ast.literal_eval(node.value)
            return {name: "soscope" + mod for name, (mod, _attr) in lazy.items()}
    return {}


def _imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` for each imported thing (``name`` None for ``import module``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    package = here if _is_package(path) else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module, alias.name) for alias in node.names]
    return [f for f in found if f[1] == "soscope" or f[1].startswith("soscope.")]


def _unit(module: str) -> str | None:
    """Return the unit of a dotted module name inside soscope (None: the ``soscope`` facade itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _target(module: str, name: str | None, units: set[str], lazy: dict[str, str]) -> str:
    """Return the dotted module an import refers to (``from soscope import X``: where ``X`` lives)."""
    if module == "soscope" and name is not None:
        if name in units:
            return f"soscope.{name}"
        return lazy.get(name, "soscope")
    return module


def _scan():
    files = sorted(SRC.rglob("*.py"))
    units = {_unit(_module_name(p)) for p in files} - {None}
    lazy = _lazy_exports()
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    private: set[str] = set()
    for path in files:
        if path == SRC / "__init__.py":
            continue
        src_unit = _unit(_module_name(path))
        where = str(path.relative_to(SRC.parent))
        for line, module, name in _imports(path):
            target = _target(module, name, units, lazy)
            dst_unit = _unit(target)
            if dst_unit is None or dst_unit == src_unit:
                continue
            edges[src_unit][dst_unit].append(f"{where}:{line}")
            inside = target.split(".")[2:]  # path below the unit
            dst_is_package = (SRC / dst_unit).is_dir()
            if dst_is_package and any(_private(p) for p in inside):
                private.add(f"{where}:{line} imports private module {target}")
            elif name is not None and _private(name) and module == target:
                private.add(f"{where}:{line} imports private name {name} from {target}")
    return edges, sorted(private)


def _cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def _module_edges() -> dict[str, dict[str, list[str]]]:
    """Edges between soscope's modules (``soscope.model._core`` ...), from every import statement.

    ``from package import name`` points at the submodule ``package.name`` when it is one, else at the
    package. A module importing one of its own parent packages is not an edge (that only runs the parent's
    ``__init__``, which is already running or done).
    """
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SRC.rglob("*.py")):
        here = _module_name(path)
        for line, module, name in _imports(path):
            target = module
            if name is not None:
                candidate = SRC.parent.joinpath(*f"{module}.{name}".split("."))
                if candidate.with_suffix(".py").exists() or candidate.is_dir():
                    target = f"{module}.{name}"
            if target != here and not here.startswith(target + "."):
                edges[here][target].append(f"{path.relative_to(SRC.parent)}:{line}")
    return edges


def test_scanner_sees_known_edges() -> None:
    """The scan finds real imports (so an empty result below means no problem, not a blind scanner)."""
    edges, _ = _scan()
    assert "io" in edges["model"]  # the model reads its inputs through io
    assert "_errors" in edges["io"]  # shared top-level modules are units too


def test_cycle_detection_finds_a_cycle() -> None:
    assert _cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": []}, "b": {}}) == []


def test_no_import_cycle_between_subpackages() -> None:
    edges, _ = _scan()
    cycles = _cycles(edges)
    detail = [
        f"{' ↔ '.join(c)}: "
        + "; ".join(f"{a}→{b} at {edges[a][b][0]}" for a in c for b in c if b in edges.get(a, {}))
        for c in cycles
    ]
    assert not cycles, "import cycles between soscope's units:\n" + "\n".join(detail)


def test_no_import_cycle_between_modules() -> None:
    """Finer than subpackages: no two modules import each other, directly or through others.

    (``model/_core.py`` and the old ``model/_dask.py`` did, through function-level imports.)
    """
    edges = _module_edges()
    assert "soscope.model._core" in edges["soscope.model._predict"]  # the scan resolves relative imports
    assert not _cycles(edges), f"import cycles between soscope's modules: {_cycles(edges)}"


def test_no_private_import_across_subpackages() -> None:
    _, private = _scan()
    assert not private, "imports of another subpackage's private modules or names:\n" + "\n".join(private)


@pytest.mark.parametrize("unit", ["_errors", "_settings", "_constants"])
def test_shared_modules_import_no_subpackage(unit: str) -> None:
    """The shared top-level modules sit below every subpackage: they import none (else cycles creep in)."""
    edges, _ = _scan()
    assert not set(edges.get(unit, {})) - {"_errors", "_constants"}
