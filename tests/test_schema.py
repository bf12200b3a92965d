"""seeds/init.sql, the one schema: runnable by psql as the postgres image runs it."""

from __future__ import annotations

import subprocess

import psycopg
import pytest

from exporter.process.schema import init_sql_path, init_sql_sections


def test_sections_are_marked() -> None:
    sections = init_sql_sections()
    assert "CREATE TABLE IF NOT EXISTS users" in sections["schema"]
    assert "CREATE TABLE IF NOT EXISTS export_jobs" in sections["schema"]
    assert "exporter_seed_users(count(*) + 1, 10000000)" in sections["seed"]
    assert "idx_users_country_code" in sections["indexes"]


@pytest.fixture
def scratch_database(database: str):  # type: ignore[no-untyped-def]
    name = "init_sql_check"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(database, dbname=name)
    yield url
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_psql_runs_init_sql(scratch_database: str) -> None:
    # The file as it is, but for the seed's size, so the test takes a second, not minutes.
    full = init_sql_path().read_text()
    text = full.replace("10000000) FROM users", "2000) FROM users")
    assert text != full, "the seed statement changed: update this test's substitution"
    for _ in range(2):  # twice: the postgres image runs it once, but it must be repeatable
        psql = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", scratch_database],
            input=text.encode(),
            capture_output=True,
        )
        assert psql.returncode == 0, psql.stderr.decode()
    with psycopg.connect(scratch_database) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (2000,)
        countries = conn.execute("SELECT count(DISTINCT country_code) FROM users").fetchone()
        assert countries == (8,)
        tiers = conn.execute("SELECT array_agg(DISTINCT subscription_tier) FROM users")
        assert sorted(tiers.fetchone()[0]) == ["enterprise", "free", "pro"]  # type: ignore[index]
        indexes = {
            row[0]
            for row in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'users'")
        }
        assert {"idx_users_country_code", "idx_users_subscription_tier"} <= indexes
        assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (0,)
