"""Storage backends and upload safety: S3 against a real S3-protocol server (moto's standalone server),
interrupted uploads, and flat memory for large uploads."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from modelyard.client import BadRequestError, Modelyard
from modelyard.config import Settings
from tests.conftest import authorize, free_port
from tests.filesets.helpers import blobs_stored

FS = "/apis/files/v2/workspaces/default/filesets"
PART = 5 * 1024 * 1024


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-protocol server in its own process."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("moto server did not start: " + log.read_text()[-1000:]) from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3(s3_server: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    import boto3

    settings.s3_access_key_id, settings.s3_secret_access_key = "testing", "testing"
    settings.s3_region, settings.s3_part_size = "us-east-1", PART
    settings.s3_endpoint_url = s3_server  # the endpoint filesets may name (storage/policy.py)
    bucket = f"bucket-{os.urandom(4).hex()}"
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket  # type: ignore[attr-defined]
    yield client


def _objects(s3: object, prefix: str = "") -> dict[str, dict]:
    listed = s3.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)  # type: ignore[attr-defined]
    return {o["Key"]: o for o in listed.get("Contents", [])}


def test_s3_fileset_multipart_upload_download_and_delete(client: Modelyard, s3: object, s3_server: str,
                                                       tmp_path: Path, app: FastAPI, settings: Settings) -> None:
    storage = {"type": "s3", "bucket": s3.bucket, "prefix": "team", "endpoint_url": s3_server}  # type: ignore[attr-defined]
    created = client.filesets.create("default", name="remote", storage=storage)
    assert created.storage.type == "s3" and "key" not in created.model_dump_json()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024 + 123))  # three parts of 5 MiB
    entry = client.filesets.upload_file("default", "remote", "weights/big.bin", big)
    assert entry.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    blob = f"team/.modelyard/blobs/{entry.sha256[:2]}/{entry.sha256}"
    objects = _objects(s3, "team/")
    assert set(objects) == {blob}  # content-addressed; the temporary object is gone
    assert objects[blob]["Size"] == big.stat().st_size
    url = f"{FS}/remote/-/weights/big.bin"
    assert client.request("GET", url, headers={"Range": "bytes=5242870-5242889"}).content == \
        big.read_bytes()[5242870:5242890]
    client.filesets.download_file("default", "remote", "weights/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()

    with pytest.raises(BadRequestError, match="sha256 mismatch"):
        client.filesets.upload_file("default", "remote", "weights/big.bin", b"corrupt", sha256="0" * 64)
    assert client.request("GET", url, headers={"Range": "bytes=0-9"}).content == big.read_bytes()[:10]
    uploads = s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])  # type: ignore[attr-defined]
    assert uploads == []  # an aborted upload leaves no parts behind

    client.filesets.delete("default", "remote")
    assert client.filesets.list("default").data == []
    settings.blob_grace = 0
    assert app.state.sweeper.sweep()["blob"] == 1  # unreferenced now: the sweeper removes the blob
    assert _objects(s3, "team/") == {}


def test_s3_interrupted_multipart_upload_stores_nothing(client: Modelyard, s3: object, s3_server: str) -> None:
    storage = {"type": "s3", "bucket": s3.bucket, "endpoint_url": s3_server}  # type: ignore[attr-defined]
    client.filesets.create("default", name="remote", storage=storage)

    def body() -> Iterator[bytes]:
        yield os.urandom(PART + 1024)  # one part gets uploaded...
        raise ConnectionError("client went away")  # ...then the client dies

    with pytest.raises(ConnectionError):
        client.request("PUT", f"{FS}/remote/-/w.bin", content=body())
    time.sleep(0.5)
    assert _objects(s3) == {}
    assert client.filesets.list_files("default", "remote").data == []


def test_an_interrupted_upload_keeps_the_previous_version(live_server: str, settings: Settings) -> None:
    with Modelyard(live_server) as client:
        client.filesets.create("default", name="files")
        client.filesets.upload_file("default", "files", "model.bin", b"complete version")
        host, port = live_server.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"PUT {FS}/files/-/model.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                         "Content-Type: application/octet-stream\r\n\r\n".encode() + b"partial" * 100)
            time.sleep(0.2)
        time.sleep(0.5)
        assert client.request("GET", f"{FS}/files/-/model.bin").content == b"complete version"
        assert [f.size for f in client.filesets.list_files("default", "files").data] == [16]
    assert blobs_stored(settings) == [hashlib.sha256(b"complete version").hexdigest()]


def test_a_large_upload_streams_with_flat_memory(live_server: str) -> None:
    size = 400 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    with Modelyard(live_server, timeout=300) as client:
        client.filesets.create("default", name="big")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        response = client.request("PUT", f"{FS}/big/-/big.bin", content=body())
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert response.json()["size"] == size
    # client and server share this process: a buffered body would add at least 400 MB to the peak
    assert after - before < 100 * 1024 * 1024, f"peak memory grew by {(after - before) >> 20} MiB"


def test_an_unreachable_bucket_is_a_clear_502(client: Modelyard, settings: Settings) -> None:
    settings.s3_access_key_id, settings.s3_secret_access_key = "testing", "testing"
    settings.s3_endpoint_url = f"http://127.0.0.1:{free_port()}"
    storage = {"type": "s3", "bucket": "nowhere", "endpoint_url": settings.s3_endpoint_url}
    client.filesets.create("default", name="offline", storage=storage)
    with pytest.raises(Exception) as err:
        client.filesets.upload_file("default", "offline", "a.bin", b"data")
    assert err.value.status_code == 502 and "fileset storage failed" in str(err.value)
    assert client.filesets.list_files("default", "offline").data == []


def test_s3_files_of_the_old_layout_are_moved_into_blobs(s3: object, s3_server: str, settings: Settings) -> None:
    import sqlalchemy as sa
    from fastapi.testclient import TestClient

    from modelyard.app import create_app
    from modelyard.db.engine import Database

    storage = {"type": "s3", "bucket": s3.bucket, "prefix": "old", "endpoint_url": s3_server}  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as http:
        client = Modelyard("http://testserver", http_client=authorize(http))
        client.filesets.create("default", name="remote", storage=storage)
        entry = client.filesets.upload_file("default", "remote", "w/config.json", b'{"old": true}')
    # as a fileset written before migration 0004 lies on S3: the object at its path, layout 1
    blob = f"old/.modelyard/blobs/{entry.sha256[:2]}/{entry.sha256}"
    s3.delete_object(Bucket=s3.bucket, Key=blob)  # type: ignore[attr-defined]
    s3.put_object(Bucket=s3.bucket, Key="old/default/remote/w/config.json", Body=b'{"old": true}')  # type: ignore[attr-defined]
    db = Database(settings.resolved_database_url)
    with db.session(write=True) as session:
        session.execute(sa.text("UPDATE filesets SET layout = 1 WHERE name = 'remote'"))
    db.dispose()
    with TestClient(create_app(settings)) as http:
        client = Modelyard("http://testserver", http_client=authorize(http))
        assert client.request("GET", f"{FS}/remote/-/w/config.json").content == b'{"old": true}'
    assert set(_objects(s3, "old/")) == {blob}
