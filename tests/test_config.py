"""Settings from the environment: README.md's Settings table is the truth (every setting
documented, every documented variable read, each default as listed), and a bad value is a
clear error naming its variable."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from exporter.core.config import Settings
from exporter.core.errors import SettingsError
from tests.support import ROOT


def readme_settings() -> dict[str, str]:
    """README's Settings table: each variable and its default, as written there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            variable, default, _meaning = line.strip().strip("|").split("|", 2)
            table[variable.strip().strip("`")] = default.strip().strip("`")
    assert table, "README.md has no Settings table"
    return table


class ReadRecorder(Mapping[str, str]):
    """An empty environment that notes every variable looked up in it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_every_setting_is_documented_and_every_documented_variable_is_read() -> None:
    documented = set(readme_settings())
    fields = {field.name.upper() for field in dataclasses.fields(Settings)}
    assert fields - documented == set(), "settings missing from README.md's table"
    assert documented - fields == set(), "README.md lists variables that are no setting"
    environment = ReadRecorder()
    Settings.from_env(environment)
    assert environment.read == documented


@pytest.mark.parametrize(("variable", "default"), readme_settings().items())
def test_default_as_the_readme_lists_it(variable: str, default: str) -> None:
    field = variable.lower()
    actual = getattr(Settings.from_env({}), field)
    assert actual == getattr(Settings(), field)
    if default == "unset":
        assert actual is None
    else:
        # The README's value, given as the variable, is what the service does without it.
        assert getattr(Settings.from_env({variable: default}), field) == actual


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
        ("MAX_CONCURRENT_EXPORTS", "-1", "at least 0"),
        ("LEASE_SECONDS", "0", "positive"),
        ("MAX_ATTEMPTS", "0", "at least 1"),
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


@pytest.mark.parametrize(
    ("raw", "storage"),
    [
        ("s3://exports", "s3://exports"),
        ("s3://exports/prod/eu", "s3://exports/prod/eu"),
        ("/srv/exports", Path("/srv/exports")),
    ],
)
def test_export_storage_is_a_folder_or_a_bucket(raw: str, storage: object) -> None:
    assert Settings.from_env({"EXPORT_STORAGE": raw}).storage == storage


@pytest.mark.parametrize("raw", ["s3://", "s3://Exports", "s3://a", "gs://exports", "s3:/x"])
def test_export_storage_that_is_neither_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="EXPORT_STORAGE must be a folder or s3://bucket"):
        Settings.from_env({"EXPORT_STORAGE": raw})


def test_export_dir_is_the_store_without_export_storage() -> None:
    assert Settings.from_env({"EXPORT_DIR": "/srv/x"}).storage == Path("/srv/x")
