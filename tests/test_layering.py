"""Layering guards: one way down the layers, pure modules kept pure, sizes kept small.

The service's packages are layers, each importing only those below it::

    exporter.cli, exporter.process   the command line and the processes (serve, worker)
    exporter.http                    the HTTP API: app, routes, downloads
    exporter.jobs                    the job manager and the queue
    exporter.export                  one export: rows, CSV, the gzip copy
    exporter.storage                 the export store
    exporter.core                    the model, the rules, settings and errors

and ``exporter.client`` (the command-line client) may use only ``exporter.core``. No
module imports one above it, and no import circle exists between modules.

The pure modules stay pure: importing one, in a fresh interpreter, loads none of the
server stack (trio, Quart, Hypercorn, psycopg, isal). They are what the command-line client
and the tests of rules build on, so a heavy import slipped into one of them (or into the
package's __init__) would make every one of those pay for the whole server.

And the tests share helpers through tests/support/ only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

SERVER_STACK = ("trio", "quart", "hypercorn", "psycopg", "isal")

# exporter.export.query composes the export's SELECT from psycopg's typed SQL pieces
# (psycopg.sql): psycopg is its one allowed heavy import.
ALLOWED = {
    "exporter.core.model": (),
    "exporter.core.request": (),
    "exporter.core.errors": (),
    "exporter.core.files": (),
    "exporter.core.config": (),
    "exporter.export.query": ("psycopg",),
    "exporter.export.csvfmt": (),
    "exporter.http.ranges": (),
}

# Lowest first. A module may import its own layer and those before it.
LAYERS = ("core", "storage", "export", "jobs", "http", "process", "cli")
PACKAGE = ROOT / "exporter"
# The longest a function may be, and a class (data tables aside).
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 60, 250


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def service_modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def layer(module: str) -> str | None:
    """The layer of an ``exporter`` module; None for the package itself and ``__main__``."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None
    return parts[1]


def imports_of(path: Path) -> set[str]:
    """The ``exporter`` modules ``path`` imports, wherever in it (functions and
    ``TYPE_CHECKING`` blocks included): a module ``from exporter.x import name`` names a
    module of its own, else it counts as ``exporter.x``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists():
                    found.add(candidate)
    return {name for name in found if name == "exporter" or name.startswith("exporter.")}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in service_modules()}


def test_every_module_is_in_a_layer() -> None:
    unplaced = [m for m in import_graph() if layer(m) not in (*LAYERS, "client", None)]
    assert unplaced == [], f"modules outside the layers: {unplaced}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module, imported in import_graph().items():
        own = layer(module)
        for name in imported:
            theirs = layer(name)
            if own is None or theirs is None or own == theirs:
                continue
            if own == "client" or theirs == "client":
                allowed = (own == "client" and theirs == "core") or own == "cli"
            else:
                allowed = LAYERS.index(theirs) < LAYERS.index(own)
            if not allowed:
                upward.append(f"{module} imports {name}")
    assert upward == [], "\n".join(sorted(upward))


def test_no_import_circle() -> None:
    graph = import_graph()
    # Importing a package runs its __init__: an edge to it, but not to its siblings.
    circles = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(graph.get(module, ())):
            if name not in graph or name == module:
                continue
            if state.get(name) == "open":
                circles.append(" → ".join([*path[path.index(name) :], name]))
            elif name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == [], "\n".join(circles)


def _is_data_table(node: ast.AST) -> bool:
    """A function that only returns one literal table (OpenAPI's paths, say)."""
    if not isinstance(node, ast.FunctionDef):
        return False
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return (
        len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Dict)
    )


def _sizes(path: Path) -> Iterator[tuple[str, str, int]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if _is_data_table(node):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            assert node.end_lineno is not None
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            yield kind, node.name, node.end_lineno - node.lineno + 1


def test_functions_and_classes_stay_small() -> None:
    too_long = [
        f"{module_name(path)}: {kind} {name} has {lines} lines"
        for path in service_modules()
        for kind, name, lines in _sizes(path)
        if lines > (MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES)
    ]
    assert too_long == [], "\n".join(too_long)


def loaded_by(module: str) -> list[str]:
    """The modules loaded by importing ``module`` in a fresh interpreter."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", ALLOWED)
def test_pure_module_loads_no_server_stack(module: str) -> None:
    forbidden = [package for package in SERVER_STACK if package not in ALLOWED[module]]
    heavy = sorted(
        name
        for name in loaded_by(module)
        if any(name == package or name.startswith(f"{package}.") for package in forbidden)
    )
    assert heavy == [], f"importing {module} loads {heavy}"


def imported_modules(path: Path) -> set[str]:
    """The modules ``path`` imports (absolute imports only: tests/ has no relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name)
def test_tests_share_helpers_only_through_support(path: Path) -> None:
    # Helpers live in tests/support/; fixtures in conftest.py, which pytest loads by
    # itself. A test module importing another test
    # module, conftest or the benchmarks would couple them.
    wrong = sorted(
        name
        for name in imported_modules(path)
        if name.startswith(("tests.test_", "bench")) or name in ("bench", "tests.conftest")
    )
    assert wrong == [], f"{path.name} imports {wrong}"
