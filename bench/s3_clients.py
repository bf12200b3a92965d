"""Which S3 client to stream an export through as a multipart upload: boto3, obstore, minio.

    .venv/bin/python -m bench.s3_clients [--size-mb 1024] [--repeat 1]

The store is moto's server mode (`python -m moto.server`), started as its own process on a
free loopback port, with one bucket; path-style addressing, dummy credentials, us-east-1.
Each run below is a fresh process of its own (this module with `--child`), so its CPU
time and RSS are that client's alone. It generates `--size-mb` MiB of CSV-like rows on
the fly (a 100-byte row with a counter, 2,621 rows to a chunk of 262,100 bytes; never more
than one chunk held by the generator) and feeds them to:

- local file: the baseline, the same generator written to a temporary file (no fsync);
- boto3: create_multipart_upload, then upload_part of each 8 MiB part in turn from the
  one thread, complete_multipart_upload (botocore's defaults otherwise);
- obstore open_writer: obstore.open_writer(S3Store, buffer_size=8 MiB), default
  max_concurrency (12 parts in flight);
- obstore put(iter): obstore.put(S3Store, iterator of chunks, chunk_size=8 MiB), default
  max_concurrency (12);
- minio: Minio.put_object(length=-1, part_size=8 MiB) from a file-like object over the
  generator (io.BufferedReader: read(n) returns n bytes), default num_parallel_uploads (3).

In the child: RSS (VmRSS) and the number of modules in sys.modules before and right after
importing the library, then after making its client; wall and CPU seconds (user + sys,
getrusage) of the upload alone, create to complete; CPU seconds of the whole process; peak
RSS (VmHWM: ru_maxrss is in the JSON too, but after the parent's vfork and exec Linux
carries the parent's peak into it, so below the parent's RSS it reads the parent's). In the
parent: moto's own CPU seconds during each run; after each run the object is HEADed (its
size must be exact; the part count is read from the multipart ETag's "-N", and the ETags of
all clients must be equal: the same bytes in the same parts) and deleted. Wall time is
also given as a ratio to the local file's in the same round. With `--repeat N` every round
runs all of them again (in the same order) and the tables show min-max.

Then a separate process reads what each installed library offers as public API (methods
that are not underscore-prefixed, the botocore service model, signatures), and tries the
presigned GET with response-content-disposition/-type against moto: ListMultipartUploads,
ListParts, AbortMultipartUpload by upload id, UploadPart into an existing upload id
(resuming), presigned GET with those overrides.

Writes bench/results/s3_clients.json, prints two tables.

Only the standard library is imported at the top: the child process is this module, and
what it imports before the library is measured is not counted as the library's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

MiB = 1024 * 1024
MB = 1e6
PART = 8 * MiB
ROW = b"%010d,user%010d@example.com,Firstname Lastname,US,enterprise,2024-01-01T00:00:00Z,true,42\n"
ROWS_PER_CHUNK = 2621
BUCKET = "bench-exports"
REGION = "us-east-1"
KEY_ID = "bench-key-id"
SECRET = "bench-secret-key"
CLIENTS = ["local file", "boto3", "obstore open_writer", "obstore put(iter)", "minio"]
LIBRARY = {
    "boto3": "boto3",
    "obstore open_writer": "obstore",
    "obstore put(iter)": "obstore",
    "minio": "minio",
}
FEATURES = [
    ("list_multipart_uploads", "ListMultipartUploads"),
    ("list_parts", "ListParts"),
    ("abort_by_upload_id", "AbortMultipartUpload by upload id"),
    ("upload_part_to_existing_id", "UploadPart into an existing upload id"),
    ("presigned_get_overrides", "presigned GET, response-content-disposition/-type"),
]
DISPOSITION = 'attachment; filename="export.csv"'
CONTENT_TYPE = "text/csv; charset=utf-8"


def csv_chunks(size: int) -> Iterator[bytes]:
    """``size`` bytes of CSV-like rows (100 bytes each, numbered) in chunks of 262,100."""
    assert len(ROW % (0, 0)) == 100
    row = 0
    left = size
    while left > 0:
        chunk = b"".join([ROW % (i, i) for i in range(row, row + ROWS_PER_CHUNK)])
        row += ROWS_PER_CHUNK
        if len(chunk) > left:
            chunk = chunk[:left]
        left -= len(chunk)
        yield chunk


class ChunkReader(io.RawIOBase):
    """A raw, readable stream over an iterator of chunks (wrap it in io.BufferedReader)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = memoryview(chunk)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def boto3_client(endpoint: str) -> Any:
    """boto3's client for the store, by path (imported here: see the module's last
    paragraph)."""
    import boto3
    import botocore.config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


def obstore_store(endpoint: str) -> Any:
    """obstore's client for the bucket, over plain HTTP and by path (imported here: see
    the module's last paragraph)."""
    import obstore.store

    return obstore.store.S3Store(
        BUCKET,
        endpoint=endpoint,
        region=REGION,
        access_key_id=KEY_ID,
        secret_access_key=SECRET,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


def upload(name: str, endpoint: str, key: str, size: int) -> dict[str, Any]:
    """In the child: import ``name``'s library, make its client, stream ``size`` bytes to
    ``key`` (a temporary file for the local file); returns the measurements."""
    result: dict[str, Any] = {"client": name}
    modules = len(sys.modules)
    result["rss_before_import_mb"] = round(status_kb("VmRSS") / 1024, 1)
    result["modules_before_import"] = modules
    started = time.perf_counter()
    if name == "boto3":
        # Imported here to time the import alone (the client is made by boto3_client).
        import boto3  # noqa: F401
        import botocore.config  # noqa: F401
    elif name.startswith("obstore"):
        import obstore
        import obstore.store
    elif name == "minio":
        import minio
    result["import_seconds"] = round(time.perf_counter() - started, 3)
    result["rss_after_import_mb"] = round(status_kb("VmRSS") / 1024, 1)
    result["modules_imported"] = len(sys.modules) - modules

    host = endpoint.removeprefix("http://")
    started = time.perf_counter()
    if name == "boto3":
        client = boto3_client(endpoint)
    elif name.startswith("obstore"):
        store = obstore_store(endpoint)
    elif name == "minio":
        mc = minio.Minio(host, access_key=KEY_ID, secret_key=SECRET, secure=False, region=REGION)
    result["client_seconds"] = round(time.perf_counter() - started, 3)
    result["rss_after_client_mb"] = round(status_kb("VmRSS") / 1024, 1)
    result["modules_after_client"] = len(sys.modules) - modules

    chunks = csv_chunks(size)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if name == "local file":
        with open(key, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
    elif name == "boto3":
        upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        parts: list[dict[str, Any]] = []

        def send(body: bytes) -> None:
            number = len(parts) + 1
            response = client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            parts.append({"ETag": response["ETag"], "PartNumber": number})

        try:
            # The chunks of the part being filled, joined (one copy) when it is full.
            pending: list[bytes] = []
            held = 0
            for chunk in chunks:
                room = PART - held
                if len(chunk) < room:
                    pending.append(chunk)
                    held += len(chunk)
                    continue
                pending.append(chunk[:room])
                send(b"".join(pending))
                pending = [chunk[room:]]
                held = len(pending[0])
            if held or not parts:
                send(b"".join(pending))
            client.complete_multipart_upload(
                Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
            raise
    elif name == "obstore open_writer":
        with obstore.open_writer(store, key, buffer_size=PART) as writer:
            for chunk in chunks:
                writer.write(chunk)
    elif name == "obstore put(iter)":
        obstore.put(store, key, chunks, chunk_size=PART)
    elif name == "minio":
        stream = io.BufferedReader(ChunkReader(chunks), buffer_size=PART)
        mc.put_object(BUCKET, key, stream, length=-1, part_size=PART)
    else:
        raise ValueError(name)
    wall = time.perf_counter() - started
    end = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        wall_seconds=round(wall, 3),
        upload_cpu_seconds=round(cpu(end) - cpu(usage), 2),
        upload_user_seconds=round(end.ru_utime - usage.ru_utime, 2),
        upload_sys_seconds=round(end.ru_stime - usage.ru_stime, 2),
        process_cpu_seconds=round(cpu(end), 2),
        peak_rss_mb=round(status_kb("VmHWM") / 1024, 1),
        ru_maxrss_mb=round(end.ru_maxrss / 1024, 1),
        modules_at_end=len(sys.modules),
    )
    return result


def features(endpoint: str) -> dict[str, Any]:
    """In a child: what each installed library offers as public API (see the docstring);
    the presigned GETs are tried against moto on a small object."""
    import datetime as dt
    import importlib.metadata
    import inspect
    import urllib.request

    import minio
    import obstore
    import obstore.store

    key = "features/probe.csv"
    body = b"id,email\n1,a@example.com\n"
    overrides = {
        "response-content-disposition": DISPOSITION,
        "response-content-type": CONTENT_TYPE,
    }

    def fetch(url: str) -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=30) as response:
            got = {
                "status": response.status,
                "content_disposition": response.headers.get("Content-Disposition"),
                "content_type": response.headers.get("Content-Type"),
            }
            got["overrides_applied"] = (
                got["content_disposition"] == DISPOSITION and got["content_type"] == CONTENT_TYPE
            )
            got["body_ok"] = response.read() == body
        return got

    def public(obj: Any, names: list[str]) -> dict[str, bool]:
        return {n: hasattr(obj, n) for n in names}

    report: dict[str, Any] = {}

    # boto3: the operations of botocore's S3 service model, as client methods.
    s3 = boto3_client(endpoint)
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    model = s3.meta.service_model
    operations = set(model.operation_names)
    get_members = set(model.operation_model("GetObject").input_shape.members)
    upload_part_members = set(model.operation_model("UploadPart").input_shape.members)
    url = s3.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": BUCKET,
            "Key": key,
            "ResponseContentDisposition": DISPOSITION,
            "ResponseContentType": CONTENT_TYPE,
        },
        ExpiresIn=600,
    )
    tried = fetch(url)
    report["boto3"] = {
        "version": importlib.metadata.version("boto3"),
        "list_multipart_uploads": {
            "public": "ListMultipartUploads" in operations
            and hasattr(s3, "list_multipart_uploads"),
            "api": "client.list_multipart_uploads(Bucket, Prefix=…) (paginator too: "
            f"{s3.can_paginate('list_multipart_uploads')})",
        },
        "list_parts": {
            "public": "ListParts" in operations and hasattr(s3, "list_parts"),
            "api": f"client.list_parts(Bucket, Key, UploadId) (paginator: "
            f"{s3.can_paginate('list_parts')})",
        },
        "abort_by_upload_id": {
            "public": "AbortMultipartUpload" in operations
            and hasattr(s3, "abort_multipart_upload"),
            "api": "client.abort_multipart_upload(Bucket, Key, UploadId)",
        },
        "upload_part_to_existing_id": {
            "public": "UploadPart" in operations
            and {"UploadId", "PartNumber"} <= upload_part_members,
            "api": "client.upload_part(Bucket, Key, UploadId, PartNumber, Body)",
        },
        "presigned_get_overrides": {
            "public": {"ResponseContentDisposition", "ResponseContentType"} <= get_members
            and tried["overrides_applied"],
            "api": "client.generate_presigned_url('get_object', Params={…, "
            "'ResponseContentDisposition': …, 'ResponseContentType': …})",
            "tried_against_moto": tried,
        },
    }

    # minio: the multipart calls exist only as underscore-prefixed (private) methods.
    names = [
        "list_multipart_uploads",
        "list_parts",
        "abort_multipart_upload",
        "upload_part",
        "create_multipart_upload",
        "complete_multipart_upload",
    ]
    mc = minio.Minio(
        endpoint.removeprefix("http://"),
        access_key=KEY_ID,
        secret_key=SECRET,
        secure=False,
        region=REGION,
    )
    present = public(minio.Minio, names)
    private = public(minio.Minio, [f"_{n}" for n in names])
    presign = inspect.signature(minio.Minio.presigned_get_object).parameters
    url = mc.presigned_get_object(
        BUCKET,
        key,
        expires=dt.timedelta(minutes=10),
        response_headers=dict(overrides),
    )
    tried = fetch(url)
    report["minio"] = {
        "version": importlib.metadata.version("minio"),
        "public_methods": present,
        "private_methods": private,
        "list_multipart_uploads": {
            "public": present["list_multipart_uploads"],
            "api": "none public; Minio._list_multipart_uploads exists (private)"
            if private["_list_multipart_uploads"]
            else "none",
        },
        "list_parts": {
            "public": present["list_parts"],
            "api": "none public; Minio._list_parts exists (private)"
            if private["_list_parts"]
            else "none",
        },
        "abort_by_upload_id": {
            "public": present["abort_multipart_upload"],
            "api": "none public; Minio._abort_multipart_upload exists (private; put_object "
            "calls it when an upload fails)",
        },
        "upload_part_to_existing_id": {
            "public": present["upload_part"],
            "api": "none public; Minio._upload_part(bucket, object, data, headers, "
            "upload_id, part_number) exists (private)",
        },
        "presigned_get_overrides": {
            "public": "response_headers" in presign and tried["overrides_applied"],
            "api": "Minio.presigned_get_object(bucket, object, expires, "
            "response_headers={'response-content-disposition': …, "
            "'response-content-type': …})",
            "tried_against_moto": tried,
        },
    }

    # obstore: the module's and S3Store's public names; sign() takes no query parameters.
    store = obstore_store(endpoint)
    module_names = sorted(n for n in dir(obstore) if not n.startswith("_"))
    store_names = sorted(n for n in dir(obstore.store.S3Store) if not n.startswith("_"))
    multipart_names = [
        n for n in module_names + store_names if "part" in n or "upload" in n or "abort" in n
    ]
    sign_signature = getattr(obstore.sign, "__text_signature__", None)
    url = obstore.sign(store, "GET", key, dt.timedelta(minutes=10))
    tried = fetch(url)
    tried["url_has_response_params"] = "response-content" in url
    writer_methods = ["close", "closed", "flush", "write"]
    report["obstore"] = {
        "version": importlib.metadata.version("obstore"),
        "public_module_names": module_names,
        "public_s3store_methods": store_names,
        "names_about_multipart": multipart_names,
        "list_multipart_uploads": {"public": False, "api": "none"},
        "list_parts": {"public": False, "api": "none"},
        "abort_by_upload_id": {
            "public": False,
            "api": "none: upload ids are never exposed; put()/open_writer() manage the "
            f"upload inside (WritableFile has only {', '.join(writer_methods)})",
        },
        "upload_part_to_existing_id": {"public": False, "api": "none"},
        "presigned_get_overrides": {
            "public": False,
            "api": "obstore.sign(store, method, paths, expires_in): no query parameters "
            f"(text signature {sign_signature!r})",
            "tried_against_moto": tried,
        },
    }
    if multipart_names:
        report["obstore"]["note"] = "names mentioning part/upload/abort: check them by hand"

    s3.delete_object(Bucket=BUCKET, Key=key)
    return report


# The parent: everything below runs in the process that starts moto and the children.


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(method: str, url: str) -> tuple[int, dict[str, str]]:
    """An unsigned request to moto (it does not check signatures): (status, headers)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=60) as r:
            r.read()
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def start_moto() -> tuple[Any, str]:
    import subprocess

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if request("GET", endpoint + "/")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("moto.server did not answer")
        time.sleep(0.2)
    status, _ = request("PUT", f"{endpoint}/{BUCKET}")
    if status != 200:
        raise RuntimeError(f"creating the bucket: HTTP {status}")
    return process, endpoint


def run_child(args: list[str]) -> Any:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "bench.s3_clients", "--child", *args],
        stdout=subprocess.PIPE,
        check=True,
    )
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def run_one(name: str, endpoint: str, size_mb: int, moto: Any, round_: int) -> dict[str, Any]:
    """One client in a fresh process; then HEAD the object, check its size, delete it."""
    import tempfile  # here: the children import nothing but what they measure

    local = os.path.join(tempfile.gettempdir(), f"s3_clients_{os.getpid()}.csv")
    key = local if name == "local file" else f"exports/{round_}.csv"
    moto_before = moto.cpu_times()
    started = time.perf_counter()
    size = size_mb * MiB
    result: dict[str, Any] = run_child(
        ["--name", name, "--endpoint", endpoint, "--key", key, "--size-mb", str(size_mb)]
    )
    result["child_process_seconds"] = round(time.perf_counter() - started, 2)
    moto_after = moto.cpu_times()
    result["moto_cpu_seconds"] = (
        round(moto_after.user + moto_after.system - moto_before.user - moto_before.system, 2) + 0.0
    )  # not -0.0
    result["moto_rss_mb"] = round(moto.memory_info().rss / MiB, 1)
    if name == "local file":
        result["size"] = os.path.getsize(key)
        os.unlink(key)
        result["parts"] = None
    else:
        status, headers = request("HEAD", f"{endpoint}/{BUCKET}/{key}")
        result["head_status"] = status
        result["size"] = int(headers.get("Content-Length", -1))
        etag = headers.get("ETag", "").strip('"')
        result["etag"] = etag
        result["parts"] = int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
        result["delete_status"] = request("DELETE", f"{endpoint}/{BUCKET}/{key}")[0]
    result["size_ok"] = result["size"] == size
    result["mb_per_second"] = round(size / result["wall_seconds"] / MB, 1)
    return result


def span(values: list[float], digits: int = 2) -> str:
    low, high = min(values), max(values)
    if round(low, digits) == round(high, digits):
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}-{high:.{digits}f}"


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [
        "wall_seconds",
        "mb_per_second",
        "ratio_to_local",
        "upload_cpu_seconds",
        "client_cpu_over_local",
        "process_cpu_seconds",
        "moto_cpu_seconds",
        "peak_rss_mb",
        "ru_maxrss_mb",
        "rss_after_import_mb",
        "rss_after_client_mb",
        "modules_imported",
        "modules_after_client",
        "import_seconds",
    ]
    out: dict[str, Any] = {"client": name, "runs": len(runs)}
    for key in keys:
        values = [r[key] for r in runs]
        out[key] = {"min": min(values), "max": max(values)}
    out["parts"] = sorted({r["parts"] for r in runs}, key=lambda p: p or 0)
    out["all_sizes_ok"] = all(r["size_ok"] for r in runs)
    out["etags"] = sorted({r.get("etag") or "-" for r in runs})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB to upload per client")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all the clients")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mb * MiB

    if args.child:
        if args.name == "features":
            print(json.dumps(features(args.endpoint)))
        else:
            print(json.dumps(upload(args.name, args.endpoint, args.key, size)))
        return 0

    # Imported here, not at the top: the child is this module too (see the docstring).
    import psutil

    from bench.common import machine, save_results

    process, endpoint = start_moto()
    moto = psutil.Process(process.pid)
    rounds: list[list[dict[str, Any]]] = []
    try:
        for round_ in range(args.repeat):
            runs = []
            for name in CLIENTS:
                print(f"round {round_ + 1}/{args.repeat}: {name}…", file=sys.stderr)
                runs.append(run_one(name, endpoint, args.size_mb, moto, round_))
            local = runs[0]
            for r in runs:
                r["ratio_to_local"] = round(r["wall_seconds"] / local["wall_seconds"], 2)
                r["client_cpu_over_local"] = round(
                    r["upload_cpu_seconds"] - local["upload_cpu_seconds"], 2
                )
            rounds.append(runs)
        print("features…", file=sys.stderr)
        found = run_child(["--name", "features", "--endpoint", endpoint])
        moto_rss_end = round(moto.memory_info().rss / MiB, 1)
    finally:
        process.terminate()
        process.wait(timeout=30)

    summary = [summarize(name, [runs[i] for runs in rounds]) for i, name in enumerate(CLIENTS)]
    etags = {r["etag"] for runs in rounds for r in runs if r["client"] != "local file"}
    report = {
        "machine": machine(),
        "size_bytes": size,
        "part_size_bytes": PART,
        "repeat": args.repeat,
        "chunk_bytes": ROWS_PER_CHUNK * len(ROW % (0, 0)),
        "server": "moto.server (threaded werkzeug), loopback, path-style, unsigned checks",
        "moto_rss_at_end_mb": moto_rss_end,
        "same_etag_all_clients": len(etags) == 1,
        "summary": summary,
        "rounds": rounds,
        "features": found,
    }
    save_results("s3_clients", report)

    print(f"{machine()}; {args.size_mb} MiB per client, 8 MiB parts, moto server on loopback")
    print(
        f"{'client':<20} {'wall s':>11} {'MB/s':>11} {'x local':>11} {'CPU s':>11} "
        f"{'CPU-local':>11} {'moto CPU s':>11} {'peak RSS MB':>11} {'RSS import':>11} "
        f"{'RSS client':>11} {'modules':>14} {'parts':>6} {'size ok':>7}"
    )
    for s in summary:
        row = [
            span([s[k]["min"], s[k]["max"]], digits)
            for k, digits in (
                ("wall_seconds", 2),
                ("mb_per_second", 1),
                ("ratio_to_local", 2),
                ("upload_cpu_seconds", 2),
                ("client_cpu_over_local", 2),
                ("moto_cpu_seconds", 2),
                ("peak_rss_mb", 1),
                ("rss_after_import_mb", 1),
                ("rss_after_client_mb", 1),
            )
        ]
        modules = "/".join(
            span([s[k]["min"], s[k]["max"]], 0)
            for k in ("modules_imported", "modules_after_client")
        )
        parts = "/".join("-" if p is None else str(p) for p in s["parts"])
        print(
            f"{s['client']:<20} "
            + " ".join(f"{cell:>11}" for cell in row)
            + f" {modules:>14} {parts:>6} {s['all_sizes_ok']!s:>7}"
        )
    print(
        "CPU s: the child's user+sys during the upload (create to complete); CPU-local: "
        "minus the local file's (the generator's own cost); RSS import/client: VmRSS after "
        "importing the library / making its client; modules: added to sys.modules by the import / "
        "by the import and making the client"
    )

    libraries = ["boto3", "obstore", "minio"]
    print("\npublic API, per installed library")
    heads = [f"{lib} {found[lib]['version']}" for lib in libraries]
    print(f"{'':<52} " + " ".join(f"{head:>16}" for head in heads))
    for feature, label in FEATURES:
        cells = ["yes" if found[lib][feature]["public"] else "no" for lib in libraries]
        print(f"{label:<52} " + " ".join(f"{c:>16}" for c in cells))
    for lib in libraries:
        for feature, _ in FEATURES:
            print(f"  {lib}, {feature}: {found[lib][feature]['api']}")
    print(f"one ETag for every upload (same bytes, same parts): {len(etags) == 1}")
    return 0 if all(s["all_sizes_ok"] for s in summary) and len(etags) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
