"""Layering guards.

The pure modules stay pure: importing one, in a fresh interpreter, loads none of the
server stack (trio, Quart, Hypercorn, psycopg, isal). They are what the command-line client
and the tests of rules build on, so a heavy import slipped into one of them (or into the
package's __init__) would make every one of those pay for the whole server.

And the tests share helpers through tests/support.py only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

SERVER_STACK = ("trio", "quart", "hypercorn", "psycopg", "isal")

# exporter.query composes the export's SELECT from psycopg's typed SQL pieces (psycopg.sql):
# psycopg is its one allowed heavy import.
ALLOWED = {
    "exporter.request": (),
    "exporter.query": ("psycopg",),
    "exporter.csvfmt": (),
    "exporter.ranges": (),
    "exporter.states": (),
}


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
    # Helpers live in tests/support.py (and the proxy in tests/dbproxy.py); fixtures in
    # conftest.py, which pytest loads by itself. A test module importing another test
    # module, conftest or the benchmarks would couple them.
    wrong = sorted(
        name
        for name in imported_modules(path)
        if name.startswith(("tests.test_", "bench")) or name in ("bench", "tests.conftest")
    )
    assert wrong == [], f"{path.name} imports {wrong}"
