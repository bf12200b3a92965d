"""Export files in an S3-compatible object store (``EXPORT_STORAGE=s3://bucket/prefix``).

Layout, under the prefix::

    <prefix>/<id>.csv       the finished CSV
    <prefix>/<id>.csv.gz    its gzip copy

An export streams each file as a multipart upload while it runs; the object appears only
when the upload is completed (``commit``), so a finished object is never partial. A
failed or cancelled export aborts its upload; a handed-back one leaves it open for the
next attempt, which continues it from the parts its checkpoint counted.

Memory is bounded per file: at most two parts' worth of bytes wait in the buffer (one
part is always kept back, so that a checkpoint can close a part of the minimum size at
a row boundary) and one more part is on its way to the store. With ``PART_SIZE`` of
5 MiB that is 15 MiB a file, 30 MiB an export with its gzip copy. A slow store holds
the writer in ``write``, and so, through the pipeline's channel, the cursor.

The client is boto3 (botocore): the one whose public API has every call this needs,
resuming an upload included (ListMultipartUploads, ListParts, UploadPart into an existing
upload), and presigned URLs. It reads the standard ``AWS_*`` settings itself
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``)
along with the rest of its credential chain. Every method blocks: callers run them in a
worker thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import io
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
import botocore.config
import botocore.exceptions

from exporter.core.errors import CannotResume, ExportStoreError
from exporter.core.files import EXPORT_FILE, download_headers, file_name
from exporter.storage.base import ExportFile, RangeReader

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import MultipartUploadTypeDef

__all__ = ["Location", "MultipartSink", "ObjectStorage", "PartBody", "StoredObject"]

# Every part but the last must hold at least 5 MiB (S3's rule, kept by every compatible
# store); parts of exactly that size keep the buffer small. 10,000 parts at most make
# a file of up to 48.8 GiB.
PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000
# How long a download link stays valid (seconds).
LINK_SECONDS = 300

_CONNECT_TIMEOUT = 5.0
_READ_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """A bucket and a key prefix."""

    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> Location:
        """``s3://bucket`` or ``s3://bucket/some/prefix``."""
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def _headers(export_id: uuid.UUID, gzip: bool) -> dict[str, Any]:
    """What the store answers a GET of the object with: the same as a local download
    (boto3 names each header without its hyphens: ``ContentType``)."""
    return {
        name.replace("-", ""): value
        for name, value in download_headers(export_id, gzip=gzip).items()
    }


class ObjectStorage:
    """The export store in a bucket (and a prefix) of an S3-compatible object store."""

    def __init__(self, url: str, client: S3Client | None = None) -> None:
        self.location = Location.parse(url)
        self.description = f"the export store {self.location}"
        self.client = client or _client()

    def key(self, export_id: uuid.UUID, *, gzip: bool = False) -> str:
        return self.location.prefix + file_name(export_id, gzip=gzip)

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Turn the client's errors into ``ExportStoreError``s that name the store."""
        try:
            yield
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise ExportStoreError(self._sentence(exc)) from exc

    def _sentence(self, exc: Exception) -> str:
        where = self.description
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return f"{where} needs credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        if isinstance(
            exc,
            botocore.exceptions.EndpointConnectionError
            | botocore.exceptions.ConnectionError
            | botocore.exceptions.ConnectTimeoutError
            | botocore.exceptions.ReadTimeoutError,
        ):
            return f"{where} could not be reached ({_short(exc)})"
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and not self._key_call(exc)):
                return f"{where} has no bucket named {self.location.bucket!r}"
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return f"{where} refused access ({code})"
            if status is not None and status >= 500:
                return f"{where} failed ({code or status})"
            return f"{where} answered {code or status}: {error.get('Message', '')}".rstrip(": ")
        return f"{where} failed ({_short(exc)})"

    @staticmethod
    def _key_call(exc: botocore.exceptions.ClientError) -> bool:
        return exc.operation_name not in ("HeadBucket", "ListObjectsV2", "ListMultipartUploads")

    # -- ExportStorage -------------------------------------------------------------------

    def prepare(self) -> None:
        """Nothing to create: the bucket is the operator's (its absence shows in /ready)."""

    def check(self) -> None:
        with self.calling():
            self.client.head_bucket(Bucket=self.location.bucket)

    def sink(self, export_id: uuid.UUID, *, gzip: bool = False) -> MultipartSink:
        return MultipartSink(self, self.key(export_id, gzip=gzip), _headers(export_id, gzip))

    def open_finished(self, export_id: uuid.UUID, *, gzip: bool = False) -> StoredObject | None:
        key = self.key(export_id, gzip=gzip)
        try:
            with self.calling():
                head = self.client.head_object(Bucket=self.location.bucket, Key=key)
        except ExportStoreError as exc:
            if _missing(exc):
                return None
            raise
        return StoredObject(
            self,
            key,
            size=head["ContentLength"],
            mtime=head["LastModified"].timestamp(),
            etag=head["ETag"],
        )

    def link(self, export_id: uuid.UUID, *, gzip: bool = False) -> str | None:
        params = {"Bucket": self.location.bucket, "Key": self.key(export_id, gzip=gzip)}
        # The object carries these already; saying them again in the link keeps a download
        # right for an object whose metadata was changed or lost on a copy.
        for name, value in _headers(export_id, gzip).items():
            params[f"Response{name}"] = value
        with self.calling():
            return self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=LINK_SECONDS
            )

    def remove(self, export_id: uuid.UUID) -> None:
        for gzip in (False, True):
            key = self.key(export_id, gzip=gzip)
            with self.calling():
                self.client.delete_object(Bucket=self.location.bucket, Key=key)
            self.abort_uploads(key)

    def export_files(self) -> list[ExportFile]:
        found = []
        now = dt.datetime.now(dt.UTC)
        bucket, prefix = self.location.bucket, self.location.prefix
        with self.calling():
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    file = self._export_file(item["Key"], item["LastModified"], now, False)
                    if file is not None:
                        found.append(file)
            for upload in self._open_uploads(prefix):
                file = self._export_file(upload["Key"], upload["Initiated"], now, True)
                if file is not None:
                    found.append(file)
        return found

    def _export_file(
        self, key: str, written: dt.datetime, now: dt.datetime, partial: bool
    ) -> ExportFile | None:
        name = key.removeprefix(self.location.prefix)
        match = EXPORT_FILE.match(name)
        if match is None or match["part"]:
            return None  # not ours: never delete what we did not write
        age = (now - written).total_seconds()
        return ExportFile(uuid.UUID(match["id"]), key, partial, age)

    def remove_file(self, file: ExportFile) -> None:
        if file.partial:
            self.abort_uploads(file.name)
        else:
            with self.calling():
                self.client.delete_object(Bucket=self.location.bucket, Key=file.name)

    # -- uploads -------------------------------------------------------------------------

    def uploads(self, key: str) -> list[str]:
        """The ids of the multipart uploads open for ``key``."""
        with self.calling():
            return [u["UploadId"] for u in self._open_uploads(key) if u["Key"] == key]

    def _open_uploads(self, prefix: str) -> Iterator[MultipartUploadTypeDef]:
        """The multipart uploads open under ``prefix``, every page of them (call inside
        ``calling``)."""
        for page in self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.location.bucket, Prefix=prefix
        ):
            yield from page.get("Uploads", [])

    def abort_uploads(self, key: str) -> None:
        for upload_id in self.uploads(key):
            self.abort(key, upload_id)

    def abort(self, key: str, upload_id: str) -> None:
        try:
            with self.calling():
                self.client.abort_multipart_upload(
                    Bucket=self.location.bucket, Key=key, UploadId=upload_id
                )
        except ExportStoreError as exc:
            if not _missing(exc):  # aborted already
                raise


def _client() -> S3Client:
    # Stores other than AWS (MinIO, moto, Ceph...) are reached by path, not by a host name
    # per bucket; and only a checksum the call needs is sent, since not all of them take
    # the newer trailing checksums.
    config = botocore.config.Config(
        connect_timeout=_CONNECT_TIMEOUT,
        read_timeout=_READ_TIMEOUT,
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", config=config)


def _missing(exc: ExportStoreError) -> bool:
    cause = exc.__cause__
    if not isinstance(cause, botocore.exceptions.ClientError):
        return False
    code = str(cause.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NoSuchUpload", "NotFound")


def _short(exc: Exception) -> str:
    text = str(exc)
    # botocore's connection errors quote the whole URL; the store is named already.
    return text.split(": ", 1)[0] if len(text) > 120 else text


@dataclasses.dataclass(slots=True)
class _Part:
    number: int
    size: int
    etag: str | concurrent.futures.Future[str]


class _Buffer:
    """Bytes written and not sent yet, kept as the pieces they came in (never joined: a
    part goes to the store as a ``PartBody`` over its pieces, so no byte is copied)."""

    def __init__(self) -> None:
        self.pieces: collections.deque[memoryview] = collections.deque()
        self.size = 0

    def append(self, data: bytes) -> None:
        if data:
            self.pieces.append(memoryview(data))
            self.size += len(data)

    def take(self, size: int) -> PartBody:
        """The first ``size`` bytes, removed from the buffer."""
        taken = []
        left = size
        while left:
            piece = self.pieces.popleft()
            if len(piece) > left:
                self.pieces.appendleft(piece[left:])
                piece = piece[:left]
            taken.append(piece)
            left -= len(piece)
        self.size -= size
        return PartBody(taken)

    def clear(self) -> None:
        self.pieces.clear()
        self.size = 0


class PartBody(io.RawIOBase):
    """A part's bytes as a seekable file over the pieces they were written in: what the
    client reads to hash and send them, and reads again from the start to retry."""

    def __init__(self, pieces: list[memoryview]) -> None:
        self.pieces = pieces
        self.size = sum(len(p) for p in pieces)
        self._at = 0  # the position
        self._piece, self._offset = 0, 0  # where it is: pieces[_piece][_offset:]

    def __len__(self) -> int:
        return self.size

    def file(self) -> BinaryIO:
        """Itself, as the binary file the client's types ask for (a raw one: reads come
        straight from the pieces)."""
        return cast(BinaryIO, self)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self.size}[whence]
        target = min(max(target + offset, 0), self.size)
        self._at, self._piece, self._offset = 0, 0, 0
        while self._piece < len(self.pieces) and target - self._at >= len(self.pieces[self._piece]):
            self._at += len(self.pieces[self._piece])
            self._piece += 1
        self._offset = target - self._at
        self._at = target
        return target

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._piece < len(self.pieces):
            piece = self.pieces[self._piece]
            count = min(len(piece) - self._offset, len(out) - done)
            out[done : done + count] = piece[self._offset : self._offset + count]
            done += count
            self._offset += count
            if self._offset == len(piece):
                self._piece, self._offset = self._piece + 1, 0
        self._at += done
        return done


class MultipartSink:
    """One export file streamed to the store as a multipart upload.

    The upload is created with the first part; a file that never fills one is written by
    one PUT at ``commit``. ``sync`` closes a part at the current byte, so that a
    checkpoint there can be continued from: the buffer always keeps ``PART_SIZE`` back
    for it, and before the first part ``sync`` answers None (nothing can be made durable
    yet). Parts go out from a thread of the sink's own, one at a time, while the writer
    fills the next; every end (``commit``, ``close``, ``discard``) waits for it.
    """

    def __init__(self, storage: ObjectStorage, key: str, headers: dict[str, Any]) -> None:
        self.storage = storage
        self.key = key
        self.headers = headers
        # The bytes not sent yet, as written: joined once, into a part's body, when sent
        # (a bytearray grown and cut instead costs a copy of everything, twice).
        self._buffer = _Buffer()
        self._parts: list[_Part] = []
        self._upload_id: str | None = None
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._sent = 0  # bytes handed to parts

    @property
    def _bucket(self) -> str:
        return self.storage.location.bucket

    def open(self, resume_at: int | None = None) -> None:
        self._sender = concurrent.futures.ThreadPoolExecutor(1, f"upload {self.key}")
        if resume_at is None:
            return
        # Continue the earlier attempt's upload: keep the parts up to the checkpoint (a
        # part always ends there), and send the next ones after them. Parts it sent after
        # the checkpoint are written over or left out when the upload is completed.
        ids = self.storage.uploads(self.key)
        if len(ids) != 1:
            raise CannotResume(f"{len(ids)} uploads of {self.key} are open, not one")
        parts = []
        with self.storage.calling():
            for page in self.storage.client.get_paginator("list_parts").paginate(
                Bucket=self._bucket, Key=self.key, UploadId=ids[0]
            ):
                parts += page.get("Parts", [])
        total = 0
        for number, part in enumerate(sorted(parts, key=lambda p: p["PartNumber"]), 1):
            if total == resume_at or part["PartNumber"] != number:
                break
            total += part["Size"]
            self._parts.append(_Part(number, part["Size"], part["ETag"]))
        if total != resume_at:
            raise CannotResume(f"the uploaded parts of {self.key} do not end at byte {resume_at}")
        self._upload_id, self._sent = ids[0], total

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        if self._buffer.size >= 2 * PART_SIZE:
            self._send(self._buffer.size - PART_SIZE)

    def sync(self) -> int | None:
        if self._buffer.size:
            if self._buffer.size < PART_SIZE:
                return None  # too small for a part that is not the last: not yet
            self._send(self._buffer.size)
        self._wait()
        return self._sent

    def commit(self) -> int:
        """Send the rest as the last part and complete the upload (or PUT a small file)."""
        if self._upload_id is None:
            body = self._buffer.take(self._buffer.size)
            with self.storage.calling():
                self.storage.client.put_object(
                    Bucket=self._bucket, Key=self.key, Body=body.file(), **self.headers
                )
            self._buffer.clear()
            self._shut()
            return len(body)
        if self._buffer.size:
            self._send(self._buffer.size)
        self._wait()
        self._shut()
        parts = [{"PartNumber": p.number, "ETag": p.etag} for p in self._parts]
        with self.storage.calling():
            self.storage.client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        self._upload_id = None
        return self._sent

    def close(self) -> None:
        """Stop, keeping the upload open for a later attempt (parts in flight finish)."""
        self._buffer.clear()
        self._shut()

    def discard(self) -> None:
        self._buffer.clear()
        self._shut()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            self.storage.abort(self.key, upload_id)

    def _send(self, size: int) -> None:
        """Hand the first ``size`` buffered bytes to the sender as the next part, once the
        part before it is in the store."""
        assert self._sender is not None, "write before open"
        if len(self._parts) == MAX_PARTS:
            raise ExportStoreError(
                f"the export is too large for {self.storage.description}"
                f" ({MAX_PARTS} parts of {PART_SIZE // 2**20} MiB)"
            )
        if self._upload_id is None:
            with self.storage.calling():
                created = self.storage.client.create_multipart_upload(
                    Bucket=self._bucket, Key=self.key, **self.headers
                )
            self._upload_id = created["UploadId"]
        self._wait()  # one part in flight at a time: a slow store holds the writer here
        body = self._buffer.take(size)
        number = len(self._parts) + 1
        future = self._sender.submit(self._upload_part, self._upload_id, number, body)
        self._parts.append(_Part(number, size, future))
        self._sent += size

    def _upload_part(self, upload_id: str, number: int, body: PartBody) -> str:
        with self.storage.calling():
            answer = self.storage.client.upload_part(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body.file(),
            )
        return answer["ETag"]

    def _wait(self) -> None:
        """Wait for the part in flight; its error, if any, is raised here."""
        for part in self._parts[-1:]:
            if isinstance(part.etag, concurrent.futures.Future):
                part.etag = part.etag.result()

    def _shut(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.shutdown(wait=True, cancel_futures=True)


class StoredObject:
    """A finished object, its metadata read; its bytes are read with ``If-Match``, so an
    object replaced meanwhile is not mixed into the answer."""

    file: BinaryIO | None = None

    def __init__(
        self, storage: ObjectStorage, key: str, *, size: int, mtime: float, etag: str
    ) -> None:
        self.storage, self.key = storage, key
        self.size, self.mtime, self.etag = size, mtime, etag

    def reader(self, start: int, length: int) -> RangeReader:
        return _ObjectRange(self, start, length)

    def close(self) -> None:
        pass  # nothing is held between reads


class _ObjectRange:
    def __init__(self, stored: StoredObject, start: int, length: int) -> None:
        self.stored, self.start, self.length = stored, start, length
        self._body: Any = None
        self._left = length

    def read(self, size: int) -> bytes:
        if self._left <= 0:
            return b""
        storage = self.stored.storage
        with storage.calling():
            if self._body is None:
                end = self.start + self.length - 1
                self._body = storage.client.get_object(
                    Bucket=storage.location.bucket,
                    Key=self.stored.key,
                    Range=f"bytes={self.start}-{end}",
                    IfMatch=self.stored.etag,
                )["Body"]
            chunk: bytes = self._body.read(min(size, self._left))
        if not chunk:
            raise OSError("the object ended before its announced length")
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
