"""A full export to the folder store and to an S3-compatible object store, in one run.

    .venv/bin/python -m bench.storage [--rows 10000000] [--database-url URL]

In one run, one after the other:

1. `psql \\copy` of the full export's SELECT (all columns) to a file: the baseline, as
   bench.throughput makes it; its SHA-256 is the one every export file must have.
2. A full export (POST /exports/csv, no parameters; the gzip copy on, the default) by
   `exporter serve` with the default folder store (EXPORT_DIR).
3. The same export by a fresh `exporter serve` with `EXPORT_STORAGE=s3://<bucket>/exports`,
   against moto's S3 server (tests.support.S3Server: its own process on a loopback port,
   objects kept in its memory), started by this script with a bucket of its own.

For each export: its wall time is the service's own, createdAt to completedAt of the
status document (polled twice a second: faster polling slows exports); every 100 ms, from
1 s before the POST until the status says completed, the RSS of the service's process tree
(psutil, as bench.memory does) and, for the S3 run, that of moto's process, whose CPU
seconds during the export are counted too. moto runs on the same 2 cores as the service
and PostgreSQL: what it spends competes with the export (the CPU of the whole machine
during each export is given too: it is shared with other work).

Checks: the folder's CSV and the object's bytes (streamed with get_object, 1 MiB at a
time) must have the baseline's SHA-256; the gzip copies (the folder's and the object)
must decompress (zlib, streamed) to it too. The S3 objects must have the size the status
document gives; the multipart part count is read from the ETag's "-N". Every export is
deleted at the end (DELETE /exports/{id}), the bucket must be empty after it, and moto's
RSS is read again then.

The upload's stated memory bound is 15 MiB per file (at most two 5 MiB parts buffered and
one in flight), 30 MiB an export with its gzip copy: the S3 run's peak RSS over the folder
run's is compared with 30 MiB. That difference includes boto3 itself (imported only by
a service with an object store), so the growth of each run over its own RSS before the
export is given too.

Writes bench/results/storage.json, prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    DATA,
    EXPORTS,
    Service,
    machine,
    save_results,
    seeded_database,
    service,
)
from bench.memory import every, tree_rss
from bench.throughput import psql_copy
from bench.workers import cpu_seconds
from exporter.core.request import parse_export_request
from tests.support import S3Bucket, S3Server

SAMPLE_SECONDS = 0.1
LEAD_SECONDS = 1.0
CHUNK = 1024 * 1024
MB = 1e6
MiB = 1024 * 1024
# The upload's stated bound: two 5 MiB parts buffered and one in flight, per file; two
# files (the CSV and its gzip copy) per export.
BOUND_MIB = 30.0
PREFIX = "exports"
QUARTERS = (0.25, 0.5, 0.75, 1.0)


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: the RSS of the service's process tree and of moto's process
    (if any), as (seconds since ``origin``, service bytes, moto bytes or None)."""

    def __init__(self, pid: int, moto: psutil.Process | None, origin: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.moto = moto
        self.origin = origin
        self.samples: list[tuple[float, int, int | None]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        for _ in every(SAMPLE_SECONDS):
            if self.stopping.is_set():
                return
            t = time.perf_counter() - self.origin
            try:
                rss = tree_rss(self.pid)
            except psutil.NoSuchProcess:
                return
            moto = None
            if self.moto is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    moto = int(self.moto.memory_info().rss)
            self.samples.append((t, rss, moto))

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def sha256_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    """SHA-256 (hex) and length of the bytes ``chunks`` yields, one chunk held at a time."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield chunk


def gunzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream, decompressed as it comes."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in chunks:
        # At most 4 chunks' worth out of one chunk in (CSV compresses about 3.3x).
        data = inflate.decompress(chunk, 4 * CHUNK)
        yield data
        while inflate.unconsumed_tail:
            yield inflate.decompress(inflate.unconsumed_tail, 4 * CHUNK)
    yield inflate.flush()
    if not inflate.eof:
        raise ValueError("the gzip stream ended early")


def object_chunks(bucket: S3Bucket, key: str) -> Iterator[bytes]:
    """The object's bytes, streamed by get_object, CHUNK at a time."""
    body = bucket.server.client.get_object(Bucket=bucket.name, Key=key)["Body"]
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def cpu_total(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its descendants."""
    return sum(cpu_seconds(pid).values())


def machine_busy() -> tuple[float, float]:
    """All cores' (busy, total) CPU seconds so far (busy: all but idle and iowait)."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def rss_at(samples: list[tuple[float, int, int | None]], start: float, end: float, q: float) -> int:
    """The service's RSS in the last sample at or before ``q`` of the way from ``start`` to
    ``end``."""
    at = start + q * (end - start)
    return [s for s in samples if s[0] <= at][-1][1]


def mb(value: float) -> float:
    return round(value / MB, 1)


def mib(value: float) -> float:
    return round(value / MiB, 1)


def run_export(app: Service, moto: psutil.Process | None) -> dict[str, Any]:
    """One full export, sampled (see the module's docstring); returns its figures and its
    final status document."""
    pid = app.process.pid
    origin = time.perf_counter()
    sampler = Sampler(pid, moto, origin)
    sampler.start()
    try:
        time.sleep(LEAD_SECONDS)
        cpu_before = cpu_total(pid)
        moto_cpu_before = sum(moto.cpu_times()[:2]) if moto is not None else 0.0
        busy_before, total_before = machine_busy()
        posted = time.perf_counter() - origin
        seconds, export_id = app.export({})
        ended = time.perf_counter() - origin
        busy_after, total_after = machine_busy()
        cpu_after = cpu_total(pid)
        moto_cpu_after = sum(moto.cpu_times()[:2]) if moto is not None else 0.0
    finally:
        sampler.stop()
    doc = app.client.get(f"/exports/{export_id}/status").json()
    before = [s for s in sampler.samples if s[0] < posted]
    during = [s for s in sampler.samples if s[0] >= posted]
    rss_before = statistics.median(s[1] for s in before)
    rss_peak = max(s[1] for s in during)
    result: dict[str, Any] = {
        "export_id": export_id,
        "seconds": round(seconds, 3),
        "client_seconds": round(ended - posted, 3),
        "rows": doc["progress"]["processedRows"],
        "bytes": doc["fileSize"],
        "rss_before_mb": mb(rss_before),
        "rss_peak_mb": mb(rss_peak),
        "rss_growth_mib": mib(rss_peak - rss_before),
        "rss_end_mb": mb(sampler.samples[-1][1]),
        "service_cpu_seconds": round(cpu_after - cpu_before, 2),
        "machine_cpu_busy_percent": round(
            100 * (busy_after - busy_before) / (total_after - total_before), 1
        ),
        "rss_at_quarters_mb": [mb(rss_at(sampler.samples, posted, ended, q)) for q in QUARTERS],
        "rss_samples": len(during),
        # (seconds since the POST, the service's RSS MB, moto's RSS MB or None)
        "samples": [
            [round(t - posted, 2), mb(rss), None if moto_rss is None else mb(moto_rss)]
            for t, rss, moto_rss in sampler.samples
        ],
        "doc": doc,
    }
    if moto is not None:
        moto_rss = [s[2] for s in during if s[2] is not None]
        moto_before = [s[2] for s in before if s[2] is not None]
        result.update(
            moto_cpu_seconds=round(moto_cpu_after - moto_cpu_before, 2),
            moto_rss_before_mb=mb(statistics.median(moto_before)),
            moto_rss_peak_mb=mb(max(moto_rss)),
        )
    return result


def folder_run(conninfo: str, baseline_sha: str) -> dict[str, Any]:
    """Part 2: the export to the folder store; its CSV and gzip copy checked."""
    with service(conninfo) as app:
        result = run_export(app, None)
        export_id = result["export_id"]
        try:
            csv = EXPORTS / f"{export_id}.csv"
            sha, size = sha256_chunks(file_chunks(csv))
            gz = EXPORTS / f"{export_id}.csv.gz"
            gz_sha, _ = sha256_chunks(gunzipped(file_chunks(gz)))
            result.update(
                sha256=sha,
                identical=sha == baseline_sha and size == result["bytes"],
                gzip_bytes=gz.stat().st_size,
                gzip_identical=gz_sha == baseline_sha,
            )
        finally:
            app.client.delete(f"/exports/{export_id}")
        result["files_left_after_delete"] = [
            p.name
            for p in (EXPORTS / f"{export_id}.csv", EXPORTS / f"{export_id}.csv.gz")
            if p.exists()
        ]
    return result


def s3_run(conninfo: str, baseline_sha: str) -> dict[str, Any]:
    """Part 3: the export to moto's S3 server; the objects checked, then deleted."""
    server = S3Server()
    server.start()
    try:
        assert server.process is not None
        moto = psutil.Process(server.process.pid)
        moto_rss_idle = int(moto.memory_info().rss)
        bucket = S3Bucket(server, server.new_bucket(), PREFIX)
        with service(conninfo, EXPORTS, subprocess.DEVNULL, **bucket.env) as app:
            result = run_export(app, moto)
            export_id = result["export_id"]
            try:
                key, gz_key = bucket.key(export_id), bucket.key(export_id, "gzip")
                head = server.client.head_object(Bucket=bucket.name, Key=key)
                gz_head = server.client.head_object(Bucket=bucket.name, Key=gz_key)
                started = time.perf_counter()
                sha, size = sha256_chunks(object_chunks(bucket, key))
                read_seconds = time.perf_counter() - started
                gz_sha, _ = sha256_chunks(gunzipped(object_chunks(bucket, gz_key)))
                result.update(
                    storage=bucket.storage,
                    sha256=sha,
                    identical=sha == baseline_sha and size == result["bytes"],
                    object_bytes=size,
                    object_size_matches_status=head["ContentLength"] == result["bytes"],
                    object_parts=parts(head["ETag"]),
                    object_read_seconds=round(read_seconds, 2),
                    gzip_bytes=gz_head["ContentLength"],
                    gzip_parts=parts(gz_head["ETag"]),
                    gzip_identical=gz_sha == baseline_sha,
                    moto_rss_after_reads_mb=mb(moto.memory_info().rss),
                )
            finally:
                app.client.delete(f"/exports/{export_id}")
            result["keys_left_after_delete"] = bucket.keys()
            result["uploads_left_after_delete"] = bucket.uploads()
        time.sleep(1.0)
        result["moto_rss_idle_mb"] = mb(moto_rss_idle)
        result["moto_rss_after_delete_mb"] = mb(moto.memory_info().rss)
    finally:
        server.stop()
    return result


def parts(etag: str) -> int:
    """The part count of a multipart object's ETag ("<md5>-N"); 1 for a single PUT."""
    etag = etag.strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args()
    # Both services must run the same way: no store, workers or gzip setting of the caller's.
    for name in ("EXPORT_STORAGE", "WORKERS", "GZIP_EXPORTS", "ROW_SOURCE"):
        os.environ.pop(name, None)
    run_started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    with seeded_database(args.database_url, args.rows) as conninfo:
        baseline = DATA / "psql.csv"
        try:
            psql_seconds = psql_copy(conninfo, parse_export_request({}), baseline)
            baseline_sha, baseline_bytes = sha256_chunks(file_chunks(baseline))
        finally:
            baseline.unlink(missing_ok=True)
        print(f"psql \\copy: {psql_seconds:.2f} s; folder export…", file=sys.stderr)
        folder = folder_run(conninfo, baseline_sha)
        print(f"folder: {folder['seconds']:.2f} s; S3 export…", file=sys.stderr)
        s3 = s3_run(conninfo, baseline_sha)

    for run in (folder, s3):
        run["ratio_to_psql"] = round(run["seconds"] / psql_seconds, 2)
        run["rows_per_second"] = round(run["rows"] / run["seconds"])
        run.pop("doc")
    over_folder = mib((s3["rss_peak_mb"] - folder["rss_peak_mb"]) * MB)
    growth_over_folder = round(s3["rss_growth_mib"] - folder["rss_growth_mib"], 1)
    s3["rss_over_folder_peak_mib"] = over_folder
    s3["within_bound"] = over_folder <= BOUND_MIB
    s3["rss_growth_over_folder_growth_mib"] = growth_over_folder
    s3["growth_within_bound"] = growth_over_folder <= BOUND_MIB
    run_seconds = time.perf_counter() - run_started
    report = {
        "machine": machine(),
        "started_at": started_at,
        "rows": args.rows,
        "sample_seconds": SAMPLE_SECONDS,
        "poll_seconds": 0.5,
        "bound_mib": BOUND_MIB,
        "psql": {
            "seconds": round(psql_seconds, 3),
            "bytes": baseline_bytes,
            "sha256": baseline_sha,
        },
        "folder": folder,
        "s3": s3,
        "run_seconds": round(run_seconds, 1),
    }
    save_results("storage", report)

    print(
        f"{machine()}; {args.rows:,} rows, {baseline_bytes / MB:.1f} MB of CSV; "
        f"RSS of the service's process tree every {SAMPLE_SECONDS * 1000:.0f} ms"
    )
    psql_label = "psql \\copy"
    print(
        f"{'scenario':<24} {'seconds':>8} {'x psql':>7} {'rows/s':>10} {'peak RSS MB':>11} "
        f"{'over folder MiB':>15} {'<= 30 MiB':>9} {'growth MiB':>10} {'CPU s':>6} "
        f"{'machine busy':>12} {'same':>5} {'gzip same':>9}"
    )
    print(
        f"{psql_label:<24} {psql_seconds:>8.2f} {1.0:>7.2f} "
        f"{round(args.rows / psql_seconds):>10,} {'-':>11} {'-':>15} {'-':>9} {'-':>10} "
        f"{'-':>6} {'-':>12} {'-':>5} {'-':>9}"
    )
    for label, run in (("folder (EXPORT_DIR)", folder), (f"s3 (moto, {PREFIX}/)", s3)):
        is_s3 = run is s3
        over = f"{over_folder:+.1f}" if is_s3 else "-"
        within = ("yes" if s3["within_bound"] else "NO") if is_s3 else "-"
        print(
            f"{label:<24} {run['seconds']:>8.2f} {run['ratio_to_psql']:>7.2f} "
            f"{run['rows_per_second']:>10,} {run['rss_peak_mb']:>11.1f} {over:>15} "
            f"{within:>9} {run['rss_growth_mib']:>10.1f} {run['service_cpu_seconds']:>6.1f} "
            f"{run['machine_cpu_busy_percent']:>11.0f}% {run['identical']!s:>5} "
            f"{run['gzip_identical']!s:>9}"
        )
    print(
        f"growth: peak RSS minus the run's own RSS before the export (folder "
        f"{folder['rss_before_mb']:.1f} MB, s3 {s3['rss_before_mb']:.1f} MB: the S3 service has "
        f"boto3 loaded); s3 growth over the folder's: {growth_over_folder:+.1f} MiB "
        f"({'within' if s3['growth_within_bound'] else 'OVER'} {BOUND_MIB:.0f} MiB)"
    )
    for label, run in (("folder", folder), ("s3", s3)):
        quarters = ", ".join(f"{v:.1f}" for v in run["rss_at_quarters_mb"])
        print(
            f"{label} service RSS MB before the export, then at 25/50/75/100% of its time: "
            f"{run['rss_before_mb']:.1f}; {quarters}"
        )
    print(
        f"moto (its own process, on the same {os.cpu_count()} cores as the service and "
        f"PostgreSQL, so it competes for CPU): {s3['moto_cpu_seconds']:.1f} CPU s during the "
        f"export ({s3['service_cpu_seconds']:.1f} s the service's); "
        f"RSS {s3['moto_rss_idle_mb']:.1f} MB idle, {s3['moto_rss_before_mb']:.1f} MB before, "
        f"{s3['moto_rss_peak_mb']:.1f} MB "
        f"peak during the export, {s3['moto_rss_after_reads_mb']:.1f} MB after the checks' reads,"
        f" {s3['moto_rss_after_delete_mb']:.1f} MB after DELETE"
    )
    print(
        f"objects: {s3['object_bytes']:,} bytes in {s3['object_parts']} parts, gzip "
        f"{s3['gzip_bytes']:,} in {s3['gzip_parts']} parts; size as in the status: "
        f"{s3['object_size_matches_status']}; read back at "
        f"{s3['object_bytes'] / MB / s3['object_read_seconds']:.0f} MB/s; left after DELETE: "
        f"{len(s3['keys_left_after_delete'])} objects, {len(s3['uploads_left_after_delete'])} "
        f"uploads (folder: {len(folder['files_left_after_delete'])} files)"
    )
    print(f"run took {run_seconds:.0f} s")
    ok = all(r["identical"] and r["gzip_identical"] for r in (folder, s3))
    clean = not (
        folder["files_left_after_delete"]
        or s3["keys_left_after_delete"]
        or s3["uploads_left_after_delete"]
    )
    return 0 if ok and clean and s3["object_size_matches_status"] else 1


if __name__ == "__main__":
    sys.exit(main())
