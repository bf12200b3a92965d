"""GET /metrics: scraped as Prometheus would, after real work."""

from __future__ import annotations

from collections.abc import Callable

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Server, StartServer, UsersLock, curl, wait_until_blocked


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, labels) → value."""
    response = await server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_exports_downloads_and_health_are_counted(
    start_server: StartServer, database: str, users_lock: Callable[[], UsersLock]
) -> None:
    server = await start_server(max_concurrent_exports=1)
    before = await scrape(server)
    assert before[("exporter_exports_total", (("status", "completed"),))] == 0

    export_id = await server.create(country_code="GB")
    doc = await server.wait_for(export_id, "completed")
    url = f"{server.url}/exports/{export_id}/download"
    assert (await curl(url))[0] == 200  # HTTP/1.1: sendfile
    assert (await curl("--http2-prior-knowledge", url))[0] == 200  # HTTP/2: the fallback
    for _ in range(5):
        await server.client.get("/health")

    after = await scrape(server)
    assert after[("exporter_exports_total", (("status", "completed"),))] == 1
    assert after[("exporter_exported_rows_total", ())] == doc["progress"]["processedRows"]
    assert after[("exporter_exported_bytes_total", ())] == doc["fileSize"]
    assert after[("exporter_export_duration_seconds_count", ())] == 1
    for method in ("sendfile", "fallback"):
        assert after[("exporter_download_bytes_total", (("method", method),))] == doc["fileSize"]
        assert after[("exporter_downloads_total", (("method", method),))] == 1
    assert (
        after[("exporter_health_seconds_count", ())]
        == before.get(("exporter_health_seconds_count", ()), 0) + 5
    )

    # Running and queued, live: one export blocked in the database, two waiting.
    lock = users_lock()
    running = await server.create()
    await wait_until_blocked(database, running)
    waiting = [await server.create() for _ in range(2)]
    live = await scrape(server)
    assert live[("exporter_exports_running", ())] == 1
    assert live[("exporter_exports_queued", ())] == 2
    for export in (running, *waiting):
        await server.client.delete(f"/exports/{export}")
    lock.release()
    with trio.fail_after(5):
        while (await scrape(server))[("exporter_exports_total", (("status", "cancelled"),))] < 3:
            await trio.sleep(0.05)
    final = await scrape(server)
    assert final[("exporter_exports_running", ())] == final[("exporter_exports_queued", ())] == 0
