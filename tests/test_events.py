"""Live progress as Server-Sent Events: GET /exports/{id}/events streams a progress event a
few times a second while an export runs, then its final status, and then ends."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.support import (
    GatedDatabase,
    Gates,
    Server,
    StartServer,
    UsersLock,
    at_rest,
    count_tasks,
    rows_before_gate,
    wait_until_blocked,
)

Event = tuple[str, dict[str, Any], float]  # (event name, data, arrival time)


async def read_events(server: Server, export_id: str, events: list[Event]) -> None:
    """Appends every event of the stream to ``events`` until the server closes it."""
    async with server.client.stream("GET", f"/exports/{export_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: ")), time.monotonic()))


@pytest.mark.slow  # the gated database: a second to set up
async def test_progress_events_then_the_final_status(
    start_server: StartServer, gated_database: GatedDatabase, gates: Gates
) -> None:
    # The export is stopped inside PostgreSQL twice, at two rows of the gated database, and
    # let go by the test once the stream has shown each stop: its progress is seen to move
    # whatever the machine's speed.
    server = await start_server(conninfo=gated_database.url)
    first, second = 10_001, 20_001
    batch_rows = server.settings.batch_rows
    stops = [rows_before_gate(first, batch_rows), rows_before_gate(second, batch_rows)]
    assert 0 < stops[0] < stops[1]
    gates.hold(first)
    gates.hold(second)
    export_id = await server.create()
    events: list[Event] = []

    def shown(rows: int) -> int:
        """How many progress events so far showed ``rows`` processed."""
        return sum(
            1
            for name, data, _ in events
            if name == "progress" and data["progress"]["processedRows"] == rows
        )

    async def seen(rows: int, count: int) -> None:
        with trio.fail_after(20):
            while shown(rows) < count:
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_events, server, export_id, events)
        await seen(stops[0], 2)
        gates.release(first)
        await seen(stops[1], 2)
        gates.release(second)
    # The stream ended by itself after the final status.

    names = [name for name, _, _ in events]
    assert names[-1] == "status" and set(names[:-1]) == {"progress"}
    final = events[-1][1]
    assert final["status"] == "completed" and final["progress"]["percentage"] == 100
    assert final == await server.status(export_id)  # the same document as GET status
    progress = [data for _, data, _ in events[:-1]]
    assert {data["status"] for data in progress} <= {"pending", "processing"}
    assert all(
        data["status"] == "processing"
        for data in progress
        if data["progress"]["processedRows"] in stops
    )
    assert all(data["progress"]["percentage"] < 100 for data in progress)
    rows = [data["progress"]["processedRows"] for data in progress]
    assert rows == sorted(rows)  # progress never goes back ...
    assert {stops[0], stops[1]} <= set(rows)  # ... and was seen moving forward
    assert final["progress"]["processedRows"] >= rows[-1]
    # "a few times a second": no gap between progress events near a second (and at least
    # the 4 the test waited for)
    gaps = [b - a for (_, _, a), (_, _, b) in itertools.pairwise(events[:-1])]
    assert len(progress) >= 4 and max(gaps) < 1.0, gaps


async def test_ended_export_gets_one_status_event(server: Server) -> None:
    export_id = await server.create(country_code="NZ")
    await server.wait_for(export_id, "completed")
    events: list[Event] = []
    await read_events(server, export_id, events)
    assert [name for name, _, _ in events] == ["status"]
    assert events[0][1]["status"] == "completed"


async def test_unknown_export_is_404(server: Server) -> None:
    response = await server.client.get("/exports/00000000-0000-4000-8000-000000000000/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_listener_that_leaves_holds_nothing_open(
    server: Server, database: str, users_lock: Callable[[], UsersLock]
) -> None:
    lock = users_lock()  # the export stays processing until the test lets it go
    export_id = await server.create(country_code="US", columns="id")
    await wait_until_blocked(database, export_id)
    (tasks,) = await at_rest(count_tasks)  # the server's own tasks for the job settle
    async with server.client.stream("GET", f"/exports/{export_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break  # one event, then the client goes away
    with trio.fail_after(5):
        while count_tasks() > tasks:
            await trio.sleep(0.05)
    assert (await server.status(export_id))["status"] == "processing"
    lock.release()
    doc = await server.wait_for(export_id, "completed", "failed", timeout=60)
    assert doc["status"] == "completed"  # the job went on to the end, unaffected
