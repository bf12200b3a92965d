"""A schema that is not ``users``, for the datasets tests: every common type with hostile
values, a composite key, a text key, a view (and one that would bypass row-level
security), and a datasets file that declares them.

``create_schema`` makes it in a database (idempotent: dropped and made again).
"""

from __future__ import annotations

from pathlib import Path

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/jobs/postgres_queue.py)
import psycopg

# The hostile table's rows: each row a set of values PostgreSQL writes in odd ways.
SCHEMA = r"""
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy, "very"');
CREATE DOMAIN shop.positive AS integer CHECK (VALUE > 0);

CREATE TABLE shop.everything (
    id          bigint PRIMARY KEY,
    i2          int2,
    i4          int4,
    i8          int8,
    num         numeric,
    money_ish   numeric(12, 2),
    f4          float4,
    f8          float8,
    flag        boolean,
    body        text,
    short       varchar(5),
    padded      char(6),
    raw         bytea,
    uid         uuid,
    day         date,
    at_time     time,
    at_tz_time  timetz,
    stamp       timestamp,
    stamp_tz    timestamptz,
    span        interval,
    doc         json,
    docb        jsonb,
    ints        int[],
    texts       text[],
    grid        int[][],
    feeling     shop.mood,
    host        inet,
    net         cidr,
    amount      shop.positive,
    doubled     bigint GENERATED ALWAYS AS (i4::bigint * 2) STORED
);

INSERT INTO shop.everything VALUES
(1, -32768, -2147483648, -9223372036854775808, 'NaN', 0.00, '-0', '-0', true,
 'plain', 'abc', 'ab', '\x00ff10', '00000000-0000-0000-0000-000000000000',
 '4713-01-01 BC', '00:00:00', '00:00:00+14:59', '0001-01-01 00:00:00 BC',
 '-infinity', '-178000000 years', '{"a": [1, "two", null]}', '{"b": {"c": "d,e"}}',
 '{1,NULL,3}', '{"a,b","c\"d",NULL,"NULL",""}', '{{1,2},{3,4}}', 'sad',
 '192.168.0.1/24', '10.0.0.0/8', 1, DEFAULT),
(2, 32767, 2147483647, 9223372036854775807, 'Infinity', 9999999999.99, 'NaN', 'Infinity',
 false, E'quote " comma , semicolon ; tab \t end', 'x,y', 'a"b', '\x',
 'ffffffff-ffff-ffff-ffff-ffffffffffff', '294276-12-31', '23:59:59.999999',
 '23:59:59.999999-15:59', '294276-12-31 23:59:59.999999', 'infinity',
 '1 year 2 mons 3 days 04:05:06.789', '[]', '[]', '{}', '{}', '{}', 'ok', '::1', '::/0',
 2147483647, DEFAULT),
(3, 0, 0, 0, '-Infinity', -1.50, '1e-38', '1e-300', NULL, E'line one\nline two\r\nthree\r',
 '', '', NULL, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2000-02-29', '12:34:56.5',
 '12:34:56.5+05:30', '2000-02-29 12:34:56.5', '2000-02-29 12:34:56.123456+05:45',
 '-1 days +02:03:04', 'null', '"a string"', NULL, '{" spaced ","back\\slash"}', NULL,
 'happy, "very"', '2001:db8::1', '2001:db8::/32', 3, DEFAULT),
(4, NULL, NULL, NULL, '123456789012345678901234567890.123456789012345678901234567890',
 NULL, '3.4028235e38', '-1.7976931348623157e308', true, E'emoji 😀 and ünïcödé ☃ 中文',
 'ä😀', '😀', '\xdeadbeef', NULL, NULL, NULL, NULL, NULL, '1970-01-01 00:00:00+00',
 '0', '{"emoji": "😀"}', '{"k": "\u00e9"}', '{-1}', '{"😀"}', '{{NULL,NULL}}', NULL,
 NULL, NULL, NULL, DEFAULT),
(5, 1, 1, 1, '0.000000000000000000000000000001', 0.01, '0.1', '0.1', false, '\.', '\.',
 '\.', '\\', NULL, '1999-12-31', '00:00:00.000001', NULL, '1999-12-31 23:59:59.999999',
 '1999-12-31 23:59:59.999999-08', NULL, '{"a":1}', '{"a":1}', NULL, NULL, NULL, 'ok',
 NULL, NULL, 5, DEFAULT),
(6, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, '', NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, DEFAULT),
(7, 7, 7, 7, '7', 7, '7', '7', true, '=cmd|'' /C calc''!A0', '+x', '-y', NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 7, DEFAULT);

-- Order lines: a composite key, a text key elsewhere, enough rows for several ranges.
CREATE TABLE shop.lines (
    order_id  integer NOT NULL,
    line_no   smallint NOT NULL,
    sku       text NOT NULL,
    placed_at timestamptz NOT NULL,
    total     numeric(10, 2) NOT NULL,
    status    shop.mood NOT NULL,
    note      text,
    PRIMARY KEY (order_id, line_no)
);
INSERT INTO shop.lines
SELECT o, l, 'sku-' || lpad((o * 7 + l)::text, 6, '0'),
       timestamptz '2024-01-01 00:00:00+00' + (o || ' minutes')::interval,
       ((o * 37 + l * 11) % 100000) / 100.0,
       (ARRAY['sad', 'ok', 'happy, "very"']::shop.mood[])[1 + (o + l) % 3],
       CASE WHEN o % 5 = 0 THEN NULL WHEN o % 7 = 0 THEN '' ELSE 'note "' || o || '", ok' END
FROM generate_series(1, 4000) o, generate_series(1, 3) l;
CREATE UNIQUE INDEX lines_sku ON shop.lines (sku);
ANALYZE shop.lines;

CREATE TABLE shop.customers (code text PRIMARY KEY, name text NOT NULL);
INSERT INTO shop.customers
SELECT 'c' || n, 'Customer ' || n FROM generate_series(1, 50) n;
CREATE TABLE shop.no_key (a integer, b text);

CREATE VIEW shop.big_lines WITH (security_invoker = true) AS
SELECT l.order_id, l.line_no, l.total, c.name AS customer
FROM shop.lines l JOIN shop.customers c ON c.code = 'c' || (1 + l.order_id % 50)
WHERE l.total >= 10;

CREATE TABLE shop.secrets (id integer PRIMARY KEY, tenant text NOT NULL);
ALTER TABLE shop.secrets ENABLE ROW LEVEL SECURITY;
CREATE VIEW shop.leaky AS SELECT id, tenant FROM shop.secrets;
"""

# A datasets file for that schema, every source kind.
DATASETS_TOML = """
[datasets.everything]
table = "shop.everything"
description = "Every common type, with hostile values"
[datasets.everything.filters]
i4 = ["eq", "gt", "lt", "in", "is"]
body = ["eq", "like", "ilike", "is"]
feeling = ["eq", "in"]
stamp_tz = ["gte", "lt"]
uid = ["eq"]
flag = ["is", "eq"]
num = ["gt"]
docb = ["is"]

[datasets.lines]
table = "shop.lines"
key = ["order_id", "line_no"]
columns = ["order_id", "line_no", "sku", "placed_at", "total", "status", "note"]
default_columns = ["order_id", "line_no", "total"]
description = "Order lines"
filters.status = ["eq", "in"]
filters.placed_at = ["gte", "lt"]
filters.total = ["gte", "lt"]
filters.note = ["is", "like"]

[datasets.by_sku]
table = "shop.lines"
key = "sku"
columns = ["sku", "order_id", "total"]
max_rows = 5000
filters = { order_id = ["lt"] }

[datasets.big_lines]
view = "shop.big_lines"
key = ["order_id", "line_no"]
filters = { customer = ["eq"] }

[datasets.recent]
query = \"\"\"
SELECT l.order_id, l.line_no, l.placed_at, l.total, c.name AS customer
FROM shop.lines l JOIN shop.customers c ON c.code = 'c' || (1 + l.order_id %% 50)
WHERE l.placed_at >= %(since)s AND l.sku LIKE 'sku-%%'
\"\"\"
key = ["order_id", "line_no"]
params = { since = "timestamptz" }
filters = { total = ["gte"] }

[datasets.users]
table = "users"
"""


def create_schema(conninfo: str) -> None:
    """(Re)make the ``shop`` schema in the database ``conninfo`` names."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())


def write_datasets_file(folder: Path, text: str = DATASETS_TOML) -> Path:
    """The datasets file in ``folder``; returns its path."""
    path = folder / "datasets.toml"
    path.write_text(text, encoding="utf-8")
    return path
