"""Import rules over the whole graph of `steering/` and `lsp_server/`: no cycle anywhere, the engine never reaches
the server, the engine's rooms import only the rooms below them, and the server's plumbing never reaches a feature
module.

Every import counts: at the top of a module, inside a function, and under `if TYPE_CHECKING:` (a type-only cycle
still ties the modules together). Relative imports are resolved; `from pkg import name` is an import of the
submodule `pkg.name` where there is one, else of `pkg` (a package's `__init__.py` is the module `pkg`). Importing
`a.b.c` counts as importing `a.b.c` alone: its parent packages run too, but theirs import nothing eagerly.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("steering", "lsp_server")

PLUMBING = {"server", "protocol", "transport", "worker", "config", "text", "state", "workspace", "capabilities",
            "memory", "cards", "incremental", "reading", "progress"}
"""Modules of `lsp_server` every feature may use; they import no feature module."""
FEATURES = {"actions", "commands", "completion", "documents", "hints", "hover", "lifecycle", "presets", "watch",
            "examples", "maps", "findings", "pipeline", "generation", "loading", "whole"}
"""Modules of `lsp_server` that do one part of the server's work; they import the server type only for type
checking."""
ENTRY = {"", "__main__", "cli"}
"""The package itself, and the entry modules that build the server from all of the above."""

ROOMS = {
    "sae": set(),
    "runtime": {"sae"},
    "fast": {"runtime", "sae"},
    "features": {"runtime", "sae"},
    "training": {"features", "runtime", "sae"},
    "evaluation": {"training", "features", "fast", "runtime", "sae"},
}
"""The engine's sub-packages and the rooms each may import (ARCHITECTURE.md draws them). All may import the shared
top-level modules in `BASE`; the top-level facade (`engine`, `cli`, `demo`, `testing`, the package) may import
everything."""
BASE = {"config", "errors", "atomic", "spans"}
"""Top-level modules of `steering` every room uses; they import no room."""


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `packages` (a package's `__init__.py` is the package)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[tuple[str, bool]]:
    """The modules of `known` that module `name` imports, each with whether the import is for type checking only."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(node.test) for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            base_name = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{base_name}.{alias.name}" if f"{base_name}.{alias.name}" in known else base_name
                       for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.name` where `name` is no module; or not ours
                target = target.rpartition(".")[0]
            if target:
                out.add((target, id(node) in typing_only))
    return out


def graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[tuple[str, bool]]]:
    found = modules(root, packages)
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def path_to(edges: dict[str, set[str]], start: str, goal: Iterable[str]) -> list[str] | None:
    """A chain of imports from `start` to one of `goal` (breadth first), or None."""
    goals, seen, queue = set(goal), {start}, [[start]]
    while queue:
        chain = queue.pop(0)
        for w in sorted(edges.get(chain[-1], ())):
            if w in goals:
                return [*chain, w]
            if w not in seen:
                seen.add(w)
                queue.append([*chain, w])
    return None


def plain(g: dict[str, set[tuple[str, bool]]]) -> dict[str, set[str]]:
    return {v: {w for w, _ in targets} for v, targets in g.items()}


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return plain(graph())


def test_no_import_cycle(edges: dict[str, set[str]]) -> None:
    found = cycles(edges)
    assert not found, "import cycles (type-only imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_engine_never_imports_the_server(edges: dict[str, set[str]]) -> None:
    server = {m for m in edges if m.startswith("lsp_server")}
    chains = [c for m in sorted(edges) if m.startswith("steering") and (c := path_to(edges, m, server))]
    assert not chains, "steering/ reaches lsp_server/: " + "; ".join(" -> ".join(c) for c in chains)


def room_of(module: str) -> str:
    """`steering.fast.model` -> `fast`; `steering.config` -> `config`; `steering` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_engines_rooms_import_only_the_rooms_below_them(edges: dict[str, set[str]]) -> None:
    rooms = {m.split(".")[1] for m in modules(ROOT, ["steering"]) if m.count(".") >= 2}
    assert rooms == set(ROOMS), f"each sub-package of steering/ needs its place in ROOMS: {sorted(rooms)}"
    wrong = []
    for module, targets in sorted(edges.items()):
        if not module.startswith("steering."):
            continue
        here = room_of(module)
        allowed = ROOMS.get(here, set()) | {here} | BASE if here in ROOMS or here in BASE else None
        if here in BASE:
            allowed = BASE
        for target in sorted(targets):
            if allowed is not None and target.startswith("steering") and room_of(target) not in allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "a room imports a room above it: " + "; ".join(wrong)


def test_every_server_module_has_its_place() -> None:
    names = {m.removeprefix("lsp_server").removeprefix(".") for m in modules(ROOT, ["lsp_server"])}
    assert not PLUMBING & FEATURES and not (PLUMBING | FEATURES) & ENTRY
    assert names == PLUMBING | FEATURES | ENTRY, (
        f"new modules {sorted(names - PLUMBING - FEATURES - ENTRY)} must be named plumbing or feature here; "
        f"gone: {sorted((PLUMBING | FEATURES | ENTRY) - names)}")


def test_plumbing_never_imports_a_feature(edges: dict[str, set[str]]) -> None:
    features = {f"lsp_server.{m}" for m in FEATURES}
    chains = [c for m in sorted(PLUMBING) if (c := path_to(edges, f"lsp_server.{m}", features))]
    assert not chains, "plumbing reaches a feature module: " + "; ".join(" -> ".join(c) for c in chains)


def test_features_import_the_server_type_only_for_type_checking() -> None:
    g = graph(ROOT, ["lsp_server"])
    at_run_time = sorted(m for m in FEATURES if ("lsp_server.server", False) in g[f"lsp_server.{m}"])
    assert not at_run_time, f"these import lsp_server.server at run time: {at_run_time}"


def test_the_graph_counts_every_kind_of_import(tmp_path: Path) -> None:
    """The checks above see what they must: relative imports of each form, imports in functions and under
    TYPE_CHECKING, a submodule imported by name from its package, and a cycle through them."""
    files = {
        "pkg/__init__.py": "from .a import thing\n",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\nthing = 1\n",
        "pkg/b.py": "def f():\n    from .sub import c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import os\nfrom .. import a as again\nfrom pkg.sub import d\n",
        "pkg/sub/d.py": "import pkg.sub.nothing\nfrom ..b import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    g = graph(tmp_path, ["pkg"])
    assert g == {
        "pkg": {("pkg.a", False)},
        "pkg.a": {("pkg.b", True)},
        "pkg.b": {("pkg.sub.c", False)},
        "pkg.sub": set(),
        "pkg.sub.c": {("pkg.a", False), ("pkg.sub.d", False)},
        "pkg.sub.d": {("pkg.sub", False), ("pkg.b", False)},
    }
    assert cycles(plain(g)) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.sub.d"]]
    assert path_to(plain(g), "pkg", {"pkg.sub.d"}) == ["pkg", "pkg.a", "pkg.b", "pkg.sub.c", "pkg.sub.d"]
