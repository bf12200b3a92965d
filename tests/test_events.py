"""Live progress as Server-Sent Events (issue 7): GET /exports/{id}/events."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import trio

from tests.conftest import Server, StartServer
from tests.test_download import count_tasks


async def read_events(server: Server, export_id: str) -> list[tuple[str, dict[str, Any], float]]:
    """Every event of the stream until the server closes it: (event, data, arrival time)."""
    events = []
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
    return events


async def test_progress_events_then_the_final_status(start_server: StartServer) -> None:
    server = await start_server(batch_rows=200, channel_batches=1)  # a few seconds long
    export_id = await server.create()
    events = await read_events(server, export_id)

    names = [name for name, _, _ in events]
    assert names[-1] == "status" and set(names[:-1]) == {"progress"}
    final = events[-1][1]
    assert final["status"] == "completed" and final["progress"]["percentage"] == 100
    assert final == await server.status(export_id)  # the same document as GET status
    rows = [data["progress"]["processedRows"] for _, data, _ in events[:-1]]
    assert rows == sorted(rows) and rows[-1] > rows[0]  # progress moves forward
    assert all(data["progress"]["percentage"] < 100 for _, data, _ in events[:-1])
    # "a few times a second": gaps between progress events stay near the interval
    gaps = [b - a for (_, _, a), (_, _, b) in itertools.pairwise(events)]
    assert len(events) >= 5 and max(gaps[:-1]) < 1.0


async def test_ended_export_gets_one_status_event(server: Server) -> None:
    export_id = await server.create(country_code="NZ")
    await server.wait_for(export_id, "completed")
    events = await read_events(server, export_id)
    assert [name for name, _, _ in events] == ["status"]
    assert events[0][1]["status"] == "completed"


async def test_unknown_export_is_404(server: Server) -> None:
    response = await server.client.get("/exports/00000000-0000-4000-8000-000000000000/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_listener_that_leaves_holds_nothing_open(start_server: StartServer) -> None:
    server = await start_server(batch_rows=100, channel_batches=1)
    export_id = await server.create()
    await trio.sleep(0.2)
    tasks = count_tasks()
    async with server.client.stream("GET", f"/exports/{export_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break  # one event, then the client goes away
    with trio.fail_after(5):
        while count_tasks() > tasks:
            await trio.sleep(0.05)
    doc = await server.wait_for(export_id, "completed", "failed", timeout=60)
    assert doc["status"] == "completed"  # the job went on to the end, unaffected
