"""Settings from the environment: defaults, and a clear error naming a bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import Settings, SettingsError


def test_defaults_as_the_readme_lists_them() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.export_dir == Path("exports")
    assert settings.bind == "127.0.0.1:8080"
    assert settings.embedded_pg_dir == Path(".pgdata")
    assert settings.max_concurrent_exports == 2
    assert settings.max_queued_exports == 100
    assert settings.batch_rows == 5000
    assert settings.channel_batches == 4
    assert settings.gzip_exports is True
    assert settings.zero_copy is True
    assert settings.export_ttl == 86400
    assert settings.progress_interval == 0.5


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/x",
            "EXPORT_DIR": "/srv/exports",
            "MAX_CONCURRENT_EXPORTS": "3",
            "CHANNEL_BATCHES": "0",
            "GZIP_EXPORTS": "off",
            "ZERO_COPY": "0",
            "EXPORT_TTL": "60",
        }
    )
    assert settings.database_url == "postgresql://db/x"
    assert settings.export_dir == Path("/srv/exports")
    assert settings.max_concurrent_exports == 3
    assert settings.channel_batches == 0
    assert settings.gzip_exports is False and settings.zero_copy is False
    assert settings.export_ttl == 60


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_CONCURRENT_EXPORTS", "two", "whole number"),
        ("MAX_CONCURRENT_EXPORTS", "0", "at least 1"),
        ("BATCH_ROWS", "-5", "at least 1"),
        ("EXPORT_TTL", "soon", "number of seconds"),
        ("EXPORT_TTL", "-1", "positive"),
        ("GZIP_EXPORTS", "maybe", "1/true/yes/on"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value) and message in str(caught.value)
