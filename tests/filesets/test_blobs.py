"""Content-addressed storage (issue 11): a file row points at a complete blob, so nothing a client does,
concurrently or interrupted, makes a listed file disagree with its bytes; the sweeper collects what no
row references; client mistakes in Range and paths are 4xx."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from modelyard.app import create_app
from modelyard.client import BadRequestError, Modelyard
from modelyard.config import Settings
from modelyard.db.engine import Database
from modelyard.filesets import service
from modelyard.storage import fileset_dir
from tests.conftest import AUTH, authorize, free_port
from tests.filesets.helpers import blob_path, blobs_stored

FS = "/apis/files/v2/workspaces/default/filesets"


def test_a_failed_commit_keeps_the_previous_version(client: Modelyard, settings: Settings,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client.filesets.create("default", name="files")
    old = client.filesets.upload_file("default", "files", "model.bin", b"version one")
    real = service.in_db

    async def failing(db, fn, *, write=False):  # type: ignore[no-untyped-def]
        if write:  # the database write that records the upload fails after the bytes are stored
            raise OperationalError("UPDATE", {}, Exception("server closed the connection unexpectedly"))
        return await real(db, fn, write=write)

    monkeypatch.setattr(service, "in_db", failing)
    with pytest.raises(Exception):  # noqa: B017 - how a database failure is answered is not this test's concern
        client.filesets.upload_file("default", "files", "model.bin", b"version two, never committed")
    monkeypatch.undo()
    assert client.request("GET", f"{FS}/files/-/model.bin").content == b"version one"
    assert [(f.sha256, f.size) for f in client.filesets.list_files("default", "files").data] == [(old.sha256, 11)]


async def _download_during_puts(url: str, versions: list[bytes], rounds: int) -> list[str]:
    problems: list[str] = []
    path = f"{FS}/files/-/model.bin"
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=AUTH()) as http:

        async def download() -> None:
            async with http.stream("GET", path) as response:
                etag = response.headers["etag"].strip('"')
                body = b""
                async for chunk in response.aiter_bytes(64 * 1024):
                    body += chunk
                    await asyncio.sleep(0.001)  # a slow reader: the PUTs land while it reads
            if body not in versions or hashlib.sha256(body).hexdigest() != etag:
                problems.append(f"download of {len(body)} bytes is not the version its ETag names")

        for _ in range(rounds):
            puts = [http.put(path, content=versions[i % len(versions)]) for i in range(6)]
            await asyncio.gather(*(download() for _ in range(6)), *puts)
    return problems


def test_a_download_during_puts_is_one_version_whole(live_server: str) -> None:
    versions = [os.urandom(600_000), os.urandom(200_000), os.urandom(400_000)]
    with Modelyard(live_server, timeout=60) as client:
        client.filesets.create("default", name="files")
        client.filesets.upload_file("default", "files", "model.bin", versions[0])
    assert asyncio.run(_download_during_puts(live_server, versions, rounds=15)) == []


async def _uploads_while_deleted(url: str) -> tuple[list[int], int]:
    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield os.urandom(256 * 1024)
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=60, headers=AUTH()) as http:
        uploads = [asyncio.ensure_future(http.put(f"{FS}/doomed/-/w{i}.bin", content=slow_body()))
                   for i in range(6)]
        await asyncio.sleep(0.25)
        deleted = await http.delete(f"{FS}/doomed")
        statuses = [r.status_code for r in await asyncio.gather(*uploads)]
    return statuses, deleted.status_code


def test_deleting_a_fileset_while_uploads_run(live_server: str, app: FastAPI, settings: Settings) -> None:
    with Modelyard(live_server) as client:
        client.filesets.create("default", name="doomed")
        client.filesets.upload_file("default", "doomed", "old.bin", b"from the deleted fileset")
        statuses, deleted = asyncio.run(_uploads_while_deleted(live_server))
        assert deleted == 200
        assert all(s < 500 for s in statuses), statuses
        client.filesets.create("default", name="doomed")
        assert client.filesets.list_files("default", "doomed").data == []  # nothing of the old one reappears
        for path in ("old.bin", "w0.bin"):
            with pytest.raises(Exception) as missing:
                client.request("GET", f"{FS}/doomed/-/{path}")
            assert missing.value.status_code == 404
    settings.blob_grace = 0
    app.state.sweeper.sweep()
    assert blobs_stored(settings) == []  # the deleted fileset's blobs and temporaries are collected


def test_identical_files_are_stored_once_and_swept_when_unreferenced(client: Modelyard, app: FastAPI,
                                                                     settings: Settings) -> None:
    client.filesets.create("default", name="one")
    client.filesets.create("default", name="two")
    a = client.filesets.upload_file("default", "one", "a.bin", b"shared bytes")
    client.filesets.upload_file("default", "two", "copy/of/a.bin", b"shared bytes")
    b = client.filesets.upload_file("default", "one", "b.bin", b"only here")
    assert blobs_stored(settings) == sorted([a.sha256, b.sha256])
    (settings.home / "blobs" / ".tmp-left-by-a-crash").write_bytes(b"partial")
    sweeper = app.state.sweeper
    assert sweeper.sweep() == {"tmp": 0, "blob": 0}  # within the grace period: nothing goes
    client.request("DELETE", f"{FS}/one/-/a.bin")
    client.request("DELETE", f"{FS}/one/-/b.bin")
    settings.blob_grace = 0
    assert sweeper.sweep() == {"tmp": 1, "blob": 1}  # b's blob; a's is still referenced by 'two'
    assert blobs_stored(settings) == [a.sha256]
    assert client.request("GET", f"{FS}/two/-/copy/of/a.bin").content == b"shared bytes"


def test_a_blob_published_again_during_a_sweep_stays(settings: Settings) -> None:
    from modelyard.storage import open_blobs

    blobs = open_blobs(settings.home, {"type": "local"})
    sha = hashlib.sha256(b"x").hexdigest()
    writer = blobs.writer()
    writer.write(b"x")
    writer.commit(sha)
    marks: dict[str, float] = {}
    assert blobs.sweep(set(), 3600, marks) == {"tmp": 0, "blob": 0}  # seen unreferenced, but new
    os.utime(blob_path(settings, sha), (0, 0))
    marks[sha] = 0  # unreferenced for long and old: it goes
    assert blobs.sweep(set(), 3600, marks)["blob"] == 1 and not blob_path(settings, sha).exists()


def test_a_range_with_5000_digits_is_416(client: Modelyard) -> None:
    client.filesets.create("default", name="files")
    client.filesets.upload_file("default", "files", "a.bin", b"0123456789")
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "1" * 5000, "bytes=-" + "5" * 21):
        with pytest.raises(Exception) as err:
            client.request("GET", f"{FS}/files/-/a.bin", headers={"Range": header})
        assert err.value.status_code == 416 and len(str(err.value)) < 400
    big = "bytes=0-" + "9" * 20  # 20 digits is still a range: clamped to the file
    assert client.request("GET", f"{FS}/files/-/a.bin", headers={"Range": big}).content == b"0123456789"


def test_a_path_segment_over_255_characters_is_400_without_a_server_path(client: Modelyard,
                                                                         settings: Settings) -> None:
    client.filesets.create("default", name="files")
    with pytest.raises(BadRequestError) as err:
        client.request("PUT", f"{FS}/files/-/dir/{'x' * 256}.bin", content=b"x")
    message = str(err.value)
    assert "longer than 255 characters" in message and str(settings.home) not in message and "/tmp" not in message
    with pytest.raises(BadRequestError, match="longer than 1024"):
        client.request("PUT", f"{FS}/files/-/{'/'.join(['y' * 200] * 6)}", content=b"x")
    client.filesets.upload_file("default", "files", f"{'z' * 255}.bin"[-255:], b"ok")  # 255 is fine


def test_files_of_the_old_layout_are_moved_into_blobs(settings: Settings) -> None:
    app = create_app(settings)
    with TestClient(app) as http:
        client = Modelyard("http://testserver", http_client=authorize(http))
        client.filesets.create("default", name="legacy")
        entry = client.filesets.upload_file("default", "legacy", "sub/config.json", b'{"a": 1}')
    # as a fileset written before migration 0004 lies: files at their paths, layout 1
    old = fileset_dir(settings.home, "default/legacy") / "sub/config.json"
    old.parent.mkdir(parents=True)
    os.replace(blob_path(settings, entry.sha256), old)
    db = Database(settings.resolved_database_url)
    with db.session(write=True) as session:
        session.execute(sa.text("UPDATE filesets SET layout = 1 WHERE name = 'legacy'"))
    db.dispose()
    with TestClient(create_app(settings)) as http:
        client = Modelyard("http://testserver", http_client=authorize(http))
        assert client.request("GET", f"{FS}/legacy/-/sub/config.json").content == b'{"a": 1}'
    assert blob_path(settings, entry.sha256).read_bytes() == b'{"a": 1}'
    assert not fileset_dir(settings.home, "default/legacy").exists()


# ----- a server killed during an upload --------------------------------------------------------------


def _serve(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_BLOB_GRACE": "1", "MODELYARD_SWEEP_INTERVAL": "0.5",
           "MODELYARD_AUTH": "off"}  # about crash recovery; auth has its own tests
    env.pop("MODELYARD_DATABASE_URL", None)
    with open(log, "ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)


def _temporaries(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob(".tmp-*")] if (home / "blobs").exists() else []


def _wait(condition, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def server_home(tmp_path: Path) -> Iterator[tuple[Path, int, Path]]:
    yield tmp_path / "home", free_port(), tmp_path / "server.log"


def test_a_server_killed_during_an_upload(server_home: tuple[Path, int, Path]) -> None:
    home, port, log = server_home
    url = f"http://127.0.0.1:{port}"
    server = _serve(home, port, log)
    try:
        with Modelyard(url) as client:
            client.filesets.create("default", name="files")
            old = client.filesets.upload_file("default", "files", "model.bin", b"complete version")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"PUT {FS}/files/-/model.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {64 << 20}\r\n"
                         "Content-Type: application/octet-stream\r\n\r\n".encode())
            sock.sendall(os.urandom(12 << 20))  # three batches: written to a temporary blob
            _wait(lambda: any(p.stat().st_size > 0 for p in _temporaries(home)), 30, "a temporary blob")
            server.send_signal(signal.SIGKILL)  # mid-upload
            server.wait()
        assert _temporaries(home), "the killed upload left no temporary to collect"
        server = _serve(home, port, log)
        _wait(lambda: not _temporaries(home), 30, "the sweeper removing the killed upload's temporary")
        with Modelyard(url) as client:
            assert client.request("GET", f"{FS}/files/-/model.bin").content == b"complete version"
            listed = client.filesets.list_files("default", "files").data
            assert [(f.sha256, f.size) for f in listed] == [(old.sha256, 16)]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
