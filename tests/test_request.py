"""Every rule for the export parameters (README.md's API table), on the pure validator."""

from __future__ import annotations

import pytest

from exporter.core.errors import RequestInvalid
from exporter.core.model import USER_COLUMNS, ExportRequest
from exporter.core.request import parse_export_request


def rejected(**params: object) -> dict[str, str]:
    with pytest.raises(RequestInvalid) as caught:
        parse_export_request(params)
    return {e.param: e.message for e in caught.value.errors}


def test_defaults() -> None:
    assert parse_export_request({}) == ExportRequest(
        country_code=None,
        subscription_tier=None,
        columns=USER_COLUMNS,
        delimiter=",",
        quote_char='"',
    )


def test_country_code_is_two_letters_normalised_to_upper_case() -> None:
    assert parse_export_request({"country_code": "us"}).country_code == "US"
    assert parse_export_request({"country_code": "Gb"}).country_code == "GB"
    for bad in ("USA", "U", "", "1A", "U$", "ÜS"):
        assert "two letters" in rejected(country_code=bad)["country_code"]


def test_subscription_tier() -> None:
    for tier in ("free", "pro", "enterprise"):
        assert parse_export_request({"subscription_tier": tier}).subscription_tier == tier
    message = rejected(subscription_tier="gold")["subscription_tier"]
    assert "free, pro, enterprise" in message and "gold" in message
    assert "subscription_tier" in rejected(subscription_tier="PRO")


def test_columns_subset_keeps_order() -> None:
    request = parse_export_request({"columns": "email,id"})
    assert request.columns == ("email", "id")
    assert parse_export_request({"columns": ["name"]}).columns == ("name",)
    assert parse_export_request({"columns": " id , email "}).columns == ("id", "email")


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ("id;drop table users", "unknown column"),
        ("id,password", "unknown column"),
        ('id,"name"', "unknown column"),
        ("id,id", "duplicate column id"),
        ("", "at least one column"),
        ("id,", "unknown column"),
        (["id", 3], "comma-separated string or a list"),
    ],
)
def test_columns_rejected(columns: object, expected: str) -> None:
    assert expected in rejected(columns=columns)["columns"]


def test_unknown_column_message_lists_what_is_allowed() -> None:
    assert ", ".join(USER_COLUMNS) in rejected(columns="secret")["columns"]


@pytest.mark.parametrize("param", ["delimiter", "quoteChar"])
def test_single_character_rules(param: str) -> None:
    assert "exactly one character" in rejected(**{param: "||"})[param]
    assert "exactly one character" in rejected(**{param: ""})[param]
    assert "carriage return or a line feed" in rejected(**{param: "\n"})[param]
    assert "carriage return or a line feed" in rejected(**{param: "\r"})[param]
    assert "ASCII" in rejected(**{param: "é"})[param]
    assert "NUL" in rejected(**{param: "\x00"})[param]


def test_tab_and_other_delimiters() -> None:
    assert parse_export_request({"delimiter": "\t"}).delimiter == "\t"
    request = parse_export_request({"delimiter": ";", "quoteChar": "'"})
    assert (request.delimiter, request.quote_char) == (";", "'")


def test_delimiter_must_differ_from_quote() -> None:
    assert "must differ from delimiter" in rejected(delimiter="'", quoteChar="'")["quoteChar"]
    assert "quoteChar" in rejected(delimiter='"')


def test_unknown_parameter_is_named() -> None:
    assert "unknown parameter" in rejected(country="US")["country"]


def test_every_problem_is_reported_at_once() -> None:
    errors = rejected(country_code="USA", subscription_tier="gold", columns="id,id")
    assert set(errors) == {"country_code", "subscription_tier", "columns"}


def test_non_string_values_rejected() -> None:
    assert rejected(country_code=12)["country_code"] == "must be a string"


def test_round_trip_through_json() -> None:
    request = parse_export_request(
        {"country_code": "de", "columns": "id,email", "delimiter": "\t", "quoteChar": "'"}
    )
    assert ExportRequest.from_json(request.to_json()) == request
