"""Datasets: a schema that is not ``users`` exported through tables, views and saved
queries, every common type byte-identical to PostgreSQL's COPY, typed filters, keys of
every kind, start-up validation that names the file, the dataset and the key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from exporter.core.datasets import DatasetError, Datasets, load_datasets_file, parse_datasets
from exporter.core.errors import RequestInvalid
from exporter.core.model import Checkpoint, ExportRequest, Progress
from exporter.core.request import parse_dataset_request
from exporter.export.catalog import resolve_datasets
from exporter.export.pipeline import PipelineOptions, export_csv
from exporter.storage.folder import FolderStorage
from tests.support import ROW_SOURCE_PARAMS, Server, StartServer, copy_oracle
from tests.support.datasets import DATASETS_TOML, write_datasets_file

# Small batches, so that every export of the shop schema is read in many ranges (a
# range is 50 batches: 350 rows) and crosses range ends with and without the key.
BATCH_ROWS = 7


async def _export(server: Server, name: str, params: dict[str, object]) -> tuple[str, bytes]:
    response = await server.client.post(f"/datasets/{name}/exports", params=params)  # type: ignore[arg-type]
    assert response.status_code == 202, response.text
    export_id = response.json()["exportId"]
    doc = await server.wait_for(export_id, "completed", "failed")
    assert doc["status"] == "completed", doc
    download = await server.client.get(f"/exports/{export_id}/download")
    assert download.status_code == 200
    return export_id, download.content


# -- the file's shape, without a database -------------------------------------------------


@pytest.mark.parametrize(
    ("document", "where", "says"),
    [
        ({"datasets": {"a": {"key": "id"}}}, ("a", None), "exactly one of table, view or query"),
        ({"datasets": {"a": {"table": "t", "view": "v"}}}, ("a", None), "exactly one"),
        ({"datasets": {"a": {"view": "v"}}}, ("a", "key"), "needs its key declared"),
        ({"datasets": {"a": {"table": "t", "colums": ["x"]}}}, ("a", "colums"), "unknown"),
        ({"datasets": {"a": {"table": "t", "max_rows": 0}}}, ("a", "max_rows"), "at least 1"),
        ({"datasets": {"a": {"table": "t", "filters": {"x": ["between"]}}}}, ("a", "filters"),
         "unknown operator between"),
        ({"datasets": {"a": {"table": "t", "key": ["x", "x"]}}}, ("a", "key"), "more than once"),
        ({"datasets": {"Bad-Name": {"table": "t"}}}, ("Bad-Name", None), "lower-case"),
        ({"datasets": {"a": {"table": "t", "params": {"p": "int"}}}}, ("a", "params"),
         "only a saved query"),
        ({"dataset": {}}, (None, "dataset"), "unknown section"),
    ],
)  # fmt: skip
def test_a_badly_shaped_file_names_the_file_the_dataset_and_the_key(
    document: dict[str, object], where: tuple[str | None, str | None], says: str
) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_datasets(document, "ops/datasets.toml")
    problem = next(p for p in caught.value.problems if says in p.message)
    assert (problem.file, problem.dataset, problem.key) == ("ops/datasets.toml", *where)
    assert str(problem).startswith("ops/datasets.toml")


def test_a_file_that_is_not_toml_says_so(tmp_path: Path) -> None:
    path = tmp_path / "datasets.toml"
    path.write_text("[datasets.a\ntable = 1\n")
    with pytest.raises(DatasetError, match=r"datasets.toml: not valid TOML"):
        load_datasets_file(path)
    with pytest.raises(DatasetError, match="No such file"):
        load_datasets_file(tmp_path / "missing.toml")


# -- the file against the catalog ----------------------------------------------------------


def _problems(database: str, tmp_path: Path, text: str) -> list[tuple[str | None, str | None, str]]:
    path = write_datasets_file(tmp_path, text)
    with pytest.raises(DatasetError) as caught:
        resolve_datasets(database, load_datasets_file(path))
    assert all(p.file == str(path) for p in caught.value.problems)
    return [(p.dataset, p.key, p.message) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("declaration", "key", "says"),
    [
        ('table = "shop.nope"', "table", "no table 'shop.nope'"),
        ('view = "shop.lines"\nkey = "sku"', "view", "declare it as what it is"),
        ('table = "shop.lines"\ncolumns = ["sku", "colour"]', "columns", "no column 'colour'"),
        ('table = "shop.lines"\nkey = "total"', "key", "not unique"),
        ('table = "shop.lines"\nkey = ["order_id"]', "key", "not unique"),
        ('table = "shop.everything"\nkey = "i4"', "key", "may be NULL"),
        ('table = "shop.no_key"', "key", "no primary key"),
        ('table = "shop.lines"\ncolumns = ["sku"]\nfilters = { total = ["eq"] }', "filters",
         "'total' is not an exposed column"),
        ('table = "shop.lines"\nfilters = { total = ["like"] }', "filters",
         "like make no sense for numeric(10,2)"),
        ('table = "shop.everything"\nfilters = { docb = ["eq"] }', "filters",
         "eq make no sense for jsonb"),
        ('query = "SELEC 1 AS id"\nkey = "id"', "query", "syntax error at or near"),
        ('query = "SELECT 1 AS id FROM shop.nope"\nkey = "id"', "query",
         'relation "shop.nope" does not exist'),
        ('query = "SELECT 1 AS id, 2 AS id"\nkey = "id"', "query", "two columns named 'id'"),
        ('query = "SELECT %(n)s::int AS id"\nkey = "id"\nparams = { n = "integr" }', "params",
         "no type 'integr'"),
        ('query = "SELECT \'{}\'::json AS id"\nkey = "id"', "key", "cannot order the rows"),
        ('view = "shop.leaky"\nkey = "id"', "view", "row-level security"),
        ('query = "SELECT %(delimiter)s::int AS id"\nkey = "id"\nparams = { delimiter = "int" }',
         "params", "the name of a column or of an export parameter"),
        ('view = "shop.big_lines"\nkey = "nope"', "key", "no column 'nope'"),
    ],
)  # fmt: skip
def test_the_catalog_refuses_what_cannot_be_exported(
    database: str, shop: object, tmp_path: Path, declaration: str, key: str, says: str
) -> None:
    found = _problems(database, tmp_path, f"[datasets.bad]\n{declaration}\n")
    assert any(d == "bad" and k == key and says in m for d, k, m in found), found


def test_every_problem_of_a_file_is_told_at_once(
    database: str, shop: object, tmp_path: Path
) -> None:
    text = (
        DATASETS_TOML
        + '\n[datasets.worse]\ntable = "shop.nope"\n[datasets.worst]\nview = "x.y"\nkey = "a"\n'
    )
    found = _problems(database, tmp_path, text)
    assert {d for d, _, _ in found} == {"worse", "worst"}


def test_the_shop_resolves_with_types_from_the_catalog(shop: tuple[Path, Datasets]) -> None:
    _, datasets = shop
    lines = datasets["lines"]
    assert lines.key == ("order_id", "line_no") and lines.ranged
    assert [(c.name, c.type) for c in lines.columns][:5] == [
        ("order_id", "integer"),
        ("line_no", "smallint"),
        ("sku", "text"),
        ("placed_at", "timestamp with time zone"),
        ("total", "numeric(10,2)"),
    ]
    assert lines.column("status") is not None and lines.column("status").labels == (  # type: ignore[union-attr]
        "sad", "ok", 'happy, "very"'
    )  # fmt: skip
    everything = datasets["everything"]
    assert everything.key == ("id",)  # the primary key, undeclared
    assert everything.column("amount").kind == "integer"  # type: ignore[union-attr]  # a domain
    assert everything.column("padded").type == "character(6)"  # type: ignore[union-attr]
    assert datasets["recent"].params["since"].kind == "timestamptz"
    assert datasets["big_lines"].source == "view"


# -- requests ---------------------------------------------------------------------------------


def _errors(datasets: Datasets, name: str, params: dict[str, object]) -> dict[str, str]:
    with pytest.raises(RequestInvalid) as caught:
        parse_dataset_request(datasets[name], params)
    return {e.param: e.message for e in caught.value.errors}


def test_filter_values_are_parsed_by_the_column_type(shop: tuple[Path, Datasets]) -> None:
    _, datasets = shop
    errors = _errors(
        datasets,
        "lines",
        {
            "total": "gte.lots",
            "placed_at": "lt.yesterday",
            "status": "eq.angry",
            "note": "eq.x",
            "sku": "eq.x",
            "select": "order_id,colour",
            "delimiter": ";;",
        },
    )
    assert errors["total"] == "expects a number (numeric(10,2)), got 'lots'"
    assert "expects a timestamp (timestamp with time zone) in ISO 8601" in errors["placed_at"]
    assert errors["status"] == "expects one of sad, ok, happy, \"very\", got 'angry'"
    assert errors["note"].startswith(
        "expects an operator and a value, op.value, with op one of is., like."
    )
    assert errors["sku"].startswith("unknown parameter; lines can be filtered on: status,")
    assert errors["select"].startswith("unknown column 'colour'; lines has order_id, line_no")
    assert errors["delimiter"].startswith("must be exactly one character")
    assert _errors(datasets, "everything", {"i4": "eq.2147483648"}) == {
        "i4": "2147483648 is out of range for integer"
    }
    assert _errors(datasets, "recent", {}) == {
        "since": "required: a value of timestamp with time zone"
    }
    assert (
        "in expects a list in parentheses"
        in _errors(datasets, "lines", {"status": "in.ok"})["status"]
    )


def test_a_valid_request_is_canonical(shop: tuple[Path, Datasets]) -> None:
    _, datasets = shop
    request = parse_dataset_request(
        datasets["lines"],
        {
            "select": "sku,total",
            "total": ["gte.5", "lt.1e3"],
            "status": 'in.(ok,"happy, \\"very\\"")',
            "note": "not.is.null",
            "placed_at": "gte.2024-01-05",
        },
    )
    assert request.columns == ("sku", "total")
    assert [str(f) for f in request.filters] == [
        "total=gte.5",
        "total=lt.1E+3",
        'status=in.(ok,"happy, \\"very\\"")',
        "note=not.is.null",
        "placed_at=gte.2024-01-05T00:00:00",
    ]
    assert ExportRequest.from_json(request.to_json()) == request
    assert parse_dataset_request(datasets["lines"], {}).columns == ("order_id", "line_no", "total")


# -- exports: the bytes are PostgreSQL's ------------------------------------------------------


EXPORTS: list[tuple[str, dict[str, object]]] = [
    ("everything", {}),
    ("everything", {"delimiter": ";", "quoteChar": "'"}),
    ("everything", {"delimiter": "\t"}),
    ("everything", {"select": "body"}),
    ("lines", {"select": "order_id,line_no,sku,placed_at,total,status,note"}),
    ("lines", {"select": "note,total", "status": "in.(ok,sad)", "total": ["gte.100", "lt.900"]}),
    ("lines", {"placed_at": "gte.2024-01-02T10:00:00+02:00", "note": "is.null"}),
    ("lines", {"select": "sku", "note": 'like.*"1*', "status": "not.eq.ok"}),
    ("by_sku", {"order_id": "lt.1000"}),
    ("big_lines", {}),
    ("big_lines", {"customer": "eq.Customer 7", "select": "total,customer"}),
    ("recent", {"since": "2024-01-02T00:00:00Z", "total": "gte.400"}),
]


@pytest.mark.parametrize("row_source", ROW_SOURCE_PARAMS)
async def test_every_dataset_type_and_dialect_is_byte_identical_to_copy(
    start_server: StartServer, database: str, shop: tuple[Path, Datasets], row_source: str
) -> None:
    path, datasets = shop
    server = await start_server(
        exporter_datasets=path, batch_rows=BATCH_ROWS, row_source=row_source
    )
    for name, params in EXPORTS:
        _, body = await _export(server, name, params)
        request = parse_dataset_request(datasets[name], params)
        expected = copy_oracle(database, request, datasets)
        assert body == expected, (name, params)
        assert body.count(b"\n") > 1 or name == "everything", (name, params)


async def test_the_status_names_the_dataset_and_its_filters(
    start_server: StartServer, shop: tuple[Path, Datasets]
) -> None:
    path, _ = shop
    server = await start_server(exporter_datasets=path)
    export_id, _ = await _export(server, "lines", {"total": "gte.5", "select": "sku"})
    doc = await server.status(export_id)
    assert doc["dataset"] == "lines" and doc["filters"] == ["total=gte.5"]
    assert doc["request"]["columns"] == ["sku"]
    assert doc["progress"]["processedRows"] == doc["progress"]["totalRows"] > 0


async def test_the_api_lists_the_datasets_with_their_types(
    start_server: StartServer, shop: tuple[Path, Datasets]
) -> None:
    path, _ = shop
    server = await start_server(exporter_datasets=path)
    listed = (await server.client.get("/datasets")).json()["datasets"]
    assert [d["name"] for d in listed] == [
        "everything",
        "lines",
        "by_sku",
        "big_lines",
        "recent",
        "users",
    ]
    lines = (await server.client.get("/datasets/lines")).json()
    assert lines["key"] == ["order_id", "line_no"] and lines["resumable"] is True
    assert {"name": "placed_at", "type": "timestamp with time zone"} in lines["columns"]
    assert lines["filters"]["status"] == ["eq", "in"]
    assert (await server.client.get("/datasets/nope")).status_code == 404
    refused = await server.client.post("/datasets/lines/exports", params={"total": "gte.x"})
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"param": "total", "message": "expects a number (numeric(10,2)), got 'x'"}
    ]
    # The seed's form still works, and means the users dataset of the file.
    created = await server.client.post(
        "/exports/csv", params={"country_code": "us", "columns": "id"}
    )
    assert created.status_code == 202


async def test_the_seed_form_and_the_dataset_form_export_the_same_bytes(server: Server) -> None:
    legacy = await server.create(country_code="DE", columns="id,email,lifetime_value")
    await server.wait_for(legacy, "completed")
    legacy_csv = (await server.client.get(f"/exports/{legacy}/download")).content
    _, general = await _export(
        server, "users", {"country_code": "eq.DE", "select": "id,email,lifetime_value"}
    )
    assert general == legacy_csv
    assert legacy_csv.count(b"\n") > 100


async def test_max_rows_fails_an_export_that_would_pass_it(
    start_server: StartServer, shop: tuple[Path, Datasets]
) -> None:
    path, _ = shop
    server = await start_server(exporter_datasets=path, batch_rows=BATCH_ROWS)
    response = await server.client.post("/datasets/by_sku/exports")
    export_id = response.json()["exportId"]
    doc = await server.wait_for(export_id, "failed", "completed")
    assert doc["status"] == "failed"
    assert doc["error"] == (
        "the export has more than 5,000 rows, the most its dataset allows; narrow it with filters"
    )
    assert (await server.client.get(f"/exports/{export_id}/download")).status_code == 410


async def test_a_bad_datasets_file_stops_the_start(
    start_server: StartServer, shop: object, tmp_path: Path
) -> None:
    path = write_datasets_file(tmp_path, '[datasets.bad]\ntable = "shop.nope"\n')
    with pytest.raises(BaseException) as caught:
        await start_server(exporter_datasets=path)
    assert "no table 'shop.nope'" in "\n".join(_messages(caught.value))


def _messages(error: BaseException) -> Iterator[str]:
    """The messages of an error, its causes and, for a group, its members."""
    yield str(error)
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            yield from _messages(member)
    for linked in (error.__cause__, error.__context__):
        if linked is not None:
            yield from _messages(linked)


# -- resuming after a checkpoint's key -----------------------------------------------------------


@pytest.mark.parametrize("row_source", ROW_SOURCE_PARAMS)
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("lines", {"select": "order_id,line_no,total"}),  # the key in the rows
        # The key not selected: read after the rows' columns, or (COPY) asked of the database.
        ("lines", {"select": "note", "total": "gte.300"}),
        ("by_sku", {"order_id": "lt.1500"}),  # a text key
        ("big_lines", {}),  # a view
    ],
)
async def test_an_export_resumes_after_its_checkpoint_key(
    database: str,
    shop: tuple[Path, Datasets],
    tmp_path: Path,
    name: str,
    params: dict[str, object],
    row_source: str,
) -> None:
    _, datasets = shop
    await _stop_after_two_checkpoints_and_resume(
        database, datasets, name, params, tmp_path, row_source
    )


async def test_a_query_that_must_sort_everything_resumes_when_read_by_the_cursor(
    database: str, shop: object, tmp_path: Path
) -> None:
    # No index gives ``n``'s order: one statement sorts the rows once, and the cursor's
    # checkpoints take their keys from its rows.
    text = DATASETS_TOML + (
        '\n[datasets.numbered]\nquery = "SELECT order_id * 10 + line_no AS n, sku, total'
        ' FROM shop.lines"\nkey = "n"\n'
    )
    datasets = resolve_datasets(database, load_datasets_file(write_datasets_file(tmp_path, text)))
    assert not datasets["numbered"].ranged
    await _stop_after_two_checkpoints_and_resume(
        database, datasets, "numbered", {"select": "sku,total"}, tmp_path, "cursor"
    )


async def _stop_after_two_checkpoints_and_resume(
    database: str,
    datasets: Datasets,
    name: str,
    params: dict[str, object],
    tmp_path: Path,
    row_source: str,
) -> None:
    """Export ``name`` until its second checkpoint (cancelled there, files kept), resume it
    from that checkpoint, and compare the file with COPY's."""
    request = parse_dataset_request(datasets[name], params)
    storage = FolderStorage(tmp_path)
    export_id = uuid.uuid4()
    options = PipelineOptions(
        batch_rows=BATCH_ROWS,
        row_source=row_source,
        checkpoint_interval=1e-6,
        keep_partial=True,
        datasets=datasets,
    )
    checkpoints: list[Checkpoint] = []
    with trio.CancelScope() as scope:

        async def stop_after_the_second(checkpoint: Checkpoint) -> None:
            checkpoints.append(checkpoint)
            if len(checkpoints) == 2:
                scope.cancel()  # as if the process had died here

        await export_csv(
            database, request, storage, export_id, progress=Progress(), options=options,
            on_checkpoint=stop_after_the_second,
        )  # fmt: skip
    assert len(checkpoints) == 2 and checkpoints[1].rows == 2 * BATCH_ROWS * 50
    assert len(checkpoints[1].last_key) == len(datasets[name].key)
    await export_csv(
        database, request, storage, export_id, progress=Progress(), options=options,
        resume=checkpoints[1],
    )  # fmt: skip
    assert (tmp_path / f"{export_id}.csv").read_bytes() == copy_oracle(database, request, datasets)


@pytest.mark.parametrize("row_source", ROW_SOURCE_PARAMS)
async def test_a_query_that_must_sort_everything_is_resumable_only_by_the_cursor(
    start_server: StartServer, database: str, shop: object, tmp_path: Path, row_source: str
) -> None:
    # COPY would sort everything again for each range: it reads such a query in one
    # statement, without checkpoints.
    text = DATASETS_TOML + (
        '\n[datasets.per_status]\nquery = "SELECT status::text AS status, count(*) AS lines,'
        ' sum(total) AS total FROM shop.lines GROUP BY status"\nkey = "status"\n'
    )
    path = write_datasets_file(tmp_path, text)
    datasets = resolve_datasets(database, load_datasets_file(path))
    assert not datasets["per_status"].ranged and datasets["recent"].ranged
    server = await start_server(exporter_datasets=path, batch_rows=1, row_source=row_source)
    resumable = (await server.client.get("/datasets/per_status")).json()["resumable"]
    assert resumable is (row_source == "cursor")
    _, body = await _export(server, "per_status", {})
    request = parse_dataset_request(datasets["per_status"], {})
    assert body == copy_oracle(database, request, datasets)
    assert body.count(b"\n") == 4
