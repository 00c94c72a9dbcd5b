"""Uploads larger than one batch: the event loop receives while a worker thread hashes and writes the
previous batch. Byte-exact round trips, and every way out (storage failure, client gone, size limit)
leaves the previous version and no temporary file, with no thread still writing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modelyard.client import Modelyard, PayloadTooLargeError
from modelyard.config import Settings
from modelyard.errors import PayloadTooLarge
from modelyard.filesets.service import UPLOAD_BATCH, receive_file
from modelyard.storage import _LocalBlobWriter
from tests.filesets.helpers import blob_path, blobs_stored

FS = "/apis/files/v2/workspaces/default/filesets"


def _stored(settings: Settings) -> list[str]:
    return blobs_stored(settings)


def test_a_multi_batch_upload_round_trips_byte_exactly(live_server: str, settings: Settings, tmp_path: Path) -> None:
    data = os.urandom(3 * UPLOAD_BATCH + 12345)  # three full batches and a partial one
    source = tmp_path / "weights.bin"
    source.write_bytes(data)
    with Modelyard(live_server, timeout=120) as client:
        client.filesets.create("default", name="big")
        entry = client.filesets.upload_file("default", "big", "shards/weights.bin", source)
        assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
        back = tmp_path / "back.bin"
        client.filesets.download_file("default", "big", "shards/weights.bin", back)
        assert back.read_bytes() == data
        # a body sent chunked (no Content-Length), in pieces that straddle the batch boundaries
        pieces = [data[i:i + 777_777] for i in range(0, len(data), 777_777)]
        again = client.request("PUT", f"{FS}/big/-/chunked.bin", content=iter(pieces)).json()
        assert again["size"] == len(data) and again["sha256"] == entry.sha256
    assert blob_path(settings, entry.sha256).read_bytes() == data
    assert _stored(settings) == [entry.sha256]  # the same bytes twice are stored once


def test_a_storage_failure_mid_upload_is_502_and_keeps_the_previous_version(
    client: Modelyard, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client.filesets.create("default", name="files")
    client.filesets.upload_file("default", "files", "model.bin", b"complete version")
    written = {"bytes": 0}
    real_write = _LocalBlobWriter.write

    def failing_write(self: _LocalBlobWriter, data: bytes) -> None:
        if written["bytes"] > UPLOAD_BATCH:  # the second batch, while the third arrives
            raise OSError(28, "No space left on device")
        written["bytes"] += len(data)
        real_write(self, data)

    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(4 * UPLOAD_BATCH))  # sent from disk in 1 MiB pieces
    monkeypatch.setattr(_LocalBlobWriter, "write", failing_write)
    with pytest.raises(Exception) as err:
        client.filesets.upload_file("default", "files", "model.bin", source)
    assert err.value.status_code == 502 and "No space left on device" in str(err.value)
    monkeypatch.undo()
    assert client.request("GET", f"{FS}/files/-/model.bin").content == b"complete version"
    assert [(f.path, f.size) for f in client.filesets.list_files("default", "files").data] == [("model.bin", 16)]
    assert _stored(settings) == [hashlib.sha256(b"complete version").hexdigest()]  # the temporary file is gone


def test_a_chunked_body_over_the_limit_is_413_mid_stream(client: Modelyard, settings: Settings) -> None:
    settings.max_file_size = 2 * UPLOAD_BATCH + 1  # known only once the body passes it: no Content-Length
    client.filesets.create("default", name="files")
    piece = os.urandom(1 << 20)
    with pytest.raises(PayloadTooLargeError, match="nothing was stored"):
        client.request("PUT", f"{FS}/files/-/big.bin", content=iter([piece] * (3 * UPLOAD_BATCH // len(piece))))
    assert client.filesets.list_files("default", "files").data == []
    assert _stored(settings) == []


def test_a_client_gone_after_several_batches_stores_nothing(live_server: str, settings: Settings) -> None:
    with Modelyard(live_server) as client:
        client.filesets.create("default", name="files")
        client.filesets.upload_file("default", "files", "model.bin", b"complete version")
        host, port = live_server.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"PUT {FS}/files/-/model.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * UPLOAD_BATCH}\r\n"
                         "Content-Type: application/octet-stream\r\n\r\n".encode())
            sock.sendall(os.urandom(2 * UPLOAD_BATCH + 1000))  # then the client goes away
        deadline = time.monotonic() + 30
        old = [hashlib.sha256(b"complete version").hexdigest()]
        while _stored(settings) != old:  # the server notices and removes its temporary file
            assert time.monotonic() < deadline, _stored(settings)
            time.sleep(0.1)
        assert client.request("GET", f"{FS}/files/-/model.bin").content == b"complete version"
        assert [f.size for f in client.filesets.list_files("default", "files").data] == [16]


class _SlowWriter:
    """Records whether a write is running in its thread when the caller moves on."""

    def __init__(self) -> None:
        self.active = 0
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.active += 1
        time.sleep(0.01)
        self.chunks.append(data)
        with self.lock:
            self.active -= 1

    def commit(self) -> None:
        raise AssertionError("receive_file never commits")

    def abort(self) -> None:
        raise AssertionError("receive_file never aborts")


def _body(pieces: list[bytes], then: BaseException | None = None) -> Iterator[bytes]:
    yield from pieces
    if then is not None:
        raise then


async def _aiter(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
        await asyncio.sleep(0)


def test_receive_file_returns_only_when_no_write_is_running() -> None:
    pieces = [os.urandom(256 * 1024) for _ in range(3 * UPLOAD_BATCH // (256 * 1024) + 3)]
    writer = _SlowWriter()
    size, digest = asyncio.run(receive_file(_aiter(_body(pieces)), writer, limit=1 << 40))
    assert size == sum(map(len, pieces)) and digest == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert writer.chunks == pieces and writer.active == 0

    writer = _SlowWriter()  # the body fails while a batch is being written: that write finishes first
    with pytest.raises(ConnectionResetError):
        asyncio.run(receive_file(_aiter(_body(pieces, ConnectionResetError())), writer, limit=1 << 40))
    assert writer.active == 0 and writer.chunks == pieces[: len(writer.chunks)]
    assert sum(map(len, writer.chunks)) >= UPLOAD_BATCH

    writer = _SlowWriter()  # over the limit: the same
    with pytest.raises(PayloadTooLarge, match="limit"):
        asyncio.run(receive_file(_aiter(_body(pieces)), writer, limit=2 * UPLOAD_BATCH))
    assert writer.active == 0
