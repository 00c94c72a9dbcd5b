"""Server-side requests only where the operator allows: S3 endpoints and buckets of filesets, deleting a
fileset whose storage is unreachable, and download headers that keep a browser from rendering a file."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import Database, new_id, utcnow
from modelyard.errors import InvalidRequest
from modelyard.filesets.disposition import content_disposition
from modelyard.storage.policy import check_storage, normalise_endpoint
from tests.conftest import free_port
from tests.filesets.test_storage import s3_server  # noqa: F401 - the moto server fixture

FS = "/apis/files/v2/workspaces/default/filesets"
SECRET = "secret-that-must-never-be-logged"


class Listener:
    """A TCP server on 127.0.0.1 that records every connection made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[tuple[str, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, address = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(address)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def configured(settings: Settings, **changes: Any) -> Settings:
    """The test's settings (fresh database, home) with S3 credentials and ``changes``."""
    base = {"s3_access_key_id": "testing", "s3_secret_access_key": SECRET, "s3_region": "us-east-1"}
    return settings.model_copy(update={**base, **changes})


@pytest.fixture
def make_http(settings: Settings) -> Iterator[Any]:
    """``make_http(**settings changes)`` -> a TestClient on an app with those settings."""
    opened: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        http = TestClient(create_app(configured(settings, **changes)))
        http.__enter__()
        opened.append(http)
        _authorise(http)
        return http

    yield make
    for http in opened:
        http.__exit__(None, None, None)


def _authorise(http: TestClient) -> None:
    """Send the server's admin key where the tests' fixtures know how to read it (servers with auth)."""
    try:
        from tests.conftest import admin_key  # type: ignore[attr-defined]
    except ImportError:
        return
    http.headers["Authorization"] = f"Bearer {admin_key(http.app.state.settings)}"


def s3(bucket: str = "bucket-a", **fields: Any) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, **fields}


# ----- the rules, without a server --------------------------------------------------------------


@pytest.mark.parametrize(("url", "normal"), [
    ("http://MinIO:9000/", "http://minio:9000"),
    ("HTTPS://s3.example.com", "https://s3.example.com:443"),
    ("http://s3.example.com:80", "http://s3.example.com:80"),
    ("http://[::1]:9000", "http://[::1]:9000"),
    ("http://minio_1:9000/path/", "http://minio_1:9000/path"),
])
def test_endpoints_are_normalised(url: str, normal: str) -> None:
    assert normalise_endpoint(url) == normal


@pytest.mark.parametrize(("url", "why"), [
    ("http://user:pw@127.0.0.1:9000", "user name or password"),
    ("http://user@127.0.0.1", "user name or password"),
    ("ftp://127.0.0.1:21", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("127.0.0.1:9000", "http:// or https://"),
    ("http://127.0.0.1:9000/?x=1", "query or a fragment"),
    ("http://127.0.0.1:99999", "invalid port"),
    ("http://127.0.0.1\\@evil:80", "backslash"),
    ("http://127.0.0.1 :80", "whitespace"),
    ("http://%31%32%37.0.0.1", "invalid one"),
    ("http://", "invalid one"),
])
def test_refused_endpoint_urls(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        normalise_endpoint(url)


def test_the_default_rules(tmp_path: Any) -> None:
    settings = Settings(home=tmp_path, s3_endpoint_url="http://minio:9000")
    check_storage(settings, None)
    check_storage(settings, {"type": "local"})
    check_storage(settings, s3())  # no endpoint: the configured one, any bucket
    check_storage(settings, s3("other", endpoint_url="HTTP://MINIO:9000/"))  # the configured one, spelled otherwise
    for endpoint in ("http://minio:9001", "https://minio:9000", "http://169.254.169.254"):
        with pytest.raises(InvalidRequest, match="MODELYARD_S3_ALLOWED_ENDPOINTS"):
            check_storage(settings, s3(endpoint_url=endpoint))
    with pytest.raises(InvalidRequest, match="not a valid bucket name"):
        check_storage(settings, s3("Bad_Bucket/../x"))
    with pytest.raises(InvalidRequest, match="not a region name"):
        check_storage(settings, s3(region="x.evil.example/"))
    # with no endpoint configured anywhere, naming one is refused
    with pytest.raises(InvalidRequest, match="MODELYARD_S3_ALLOWED_ENDPOINTS"):
        check_storage(Settings(home=tmp_path), s3(endpoint_url="http://minio:9000"))


def test_listed_endpoints_and_buckets(tmp_path: Any) -> None:
    settings = Settings(home=tmp_path, s3_endpoint_url="http://minio:9000",
                        s3_allowed_endpoints=["https://Other.example.com/", "not a url"])
    # the endpoint passes, but with MODELYARD_S3_ALLOWED_BUCKETS unset none of its buckets does
    with pytest.raises(InvalidRequest, match="MODELYARD_S3_ALLOWED_BUCKETS"):
        check_storage(settings, s3("bucket-a", endpoint_url="https://other.example.com:443"))
    check_storage(settings, s3(endpoint_url="http://minio:9000"))  # the configured one stays allowed
    listed = settings.model_copy(update={"s3_allowed_buckets": ["bucket-a"]})
    check_storage(listed, s3("bucket-a", endpoint_url="https://other.example.com"))
    for storage in (s3("bucket-b"), s3("bucket-b", endpoint_url="https://other.example.com")):
        with pytest.raises(InvalidRequest, match="MODELYARD_S3_ALLOWED_BUCKETS"):
            check_storage(listed, storage)
    anything = settings.model_copy(update={"s3_allowed_buckets": ["*"]})
    check_storage(anything, s3("bucket-b", endpoint_url="https://other.example.com"))


def test_content_disposition() -> None:
    assert content_disposition("a/b/model.safetensors") == 'attachment; filename="model.safetensors"'
    assert content_disposition('x/we"ird\\.txt') == \
        "attachment; filename=\"we_ird_.txt\"; filename*=UTF-8''we%22ird%5C.txt"
    assert content_disposition("résumé ü.txt") == \
        "attachment; filename=\"r_sum_ _.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%BC.txt"


# ----- through the API ------------------------------------------------------------------------------


def test_a_foreign_endpoint_is_refused_before_any_request(make_http: Any, listener: Listener) -> None:
    http = make_http(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    host_port = listener.url.removeprefix("http://")
    for endpoint, message in [
        (listener.url, "MODELYARD_S3_ALLOWED_ENDPOINTS"),
        (f"http://localhost:{host_port.split(':')[1]}", "MODELYARD_S3_ALLOWED_ENDPOINTS"),
        (f"http://testing:{SECRET}@{host_port}", "user name or password"),
        (f"ftp://{host_port}", "http:// or https://"),
    ]:
        response = http.post(FS, json={"name": "foreign", "storage": s3(endpoint_url=endpoint)})
        assert response.status_code == 400, response.text
        assert message in response.json()["detail"]
        assert SECRET not in response.text
    assert http.get(FS).json()["data"] == []
    time.sleep(0.3)
    assert listener.connections == []


def test_a_fileset_whose_endpoint_is_no_longer_allowed_gets_no_request(
        make_http: Any, listener: Listener, settings: Settings) -> None:
    """A row naming an endpoint the operator has since taken off the list (or written before the rule)."""
    db = Database(settings.resolved_database_url)
    with db.session(write=True) as session:
        now = utcnow()
        session.add(tables.Fileset(id=new_id("fileset"), workspace="default", name="old", purpose="generic",
                                   storage_type="s3", storage=s3(endpoint_url=listener.url),
                                   created_at=now, updated_at=now))
    db.dispose()
    http = make_http()
    assert http.put(f"{FS}/old/-/a.bin", content=b"data").status_code == 400
    response = http.get(f"{FS}/old/-/a.bin")
    assert response.status_code == 400 and "MODELYARD_S3_ALLOWED_ENDPOINTS" in response.json()["detail"]
    http.app.state.sweeper.sweep()  # the area is refused too
    assert http.delete(f"{FS}/old").status_code == 200
    time.sleep(0.3)
    assert listener.connections == []


def test_an_allowed_endpoint_and_bucket_work(make_http: Any, s3_server: str) -> None:  # noqa: F811
    import boto3

    buckets = [f"bucket-{os.urandom(4).hex()}" for _ in range(2)]
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    # no default endpoint: moto is only listed, spelled differently, and only one bucket is allowed
    http = make_http(s3_secret_access_key="testing", s3_allowed_endpoints=[s3_server.upper() + "/"],
                     s3_allowed_buckets=[buckets[0]], s3_part_size=5 * 1024 * 1024)
    created = http.post(FS, json={"name": "remote", "storage": s3(buckets[0], endpoint_url=s3_server)})
    assert created.status_code == 200, created.text
    assert http.put(f"{FS}/remote/-/w/a.bin", content=b"remote bytes").status_code == 200
    assert http.get(f"{FS}/remote/-/w/a.bin").content == b"remote bytes"
    refused = http.post(FS, json={"name": "other", "storage": s3(buckets[1], endpoint_url=s3_server)})
    assert refused.status_code == 400 and "MODELYARD_S3_ALLOWED_BUCKETS" in refused.json()["detail"]
    assert http.delete(f"{FS}/remote").status_code == 200


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_fileset_on_unreachable_storage_can_be_deleted(make_http: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries only slow the sweep pass down
    http = make_http(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert http.post(FS, json={"name": "offline", "storage": s3("nowhere")}).status_code == 200
    assert http.put(f"{FS}/offline/-/a.bin", content=b"data").status_code == 502
    deleted = http.delete(f"{FS}/offline")
    assert deleted.status_code == 200 and deleted.json()["name"] == "offline"
    assert http.get(f"{FS}/offline").status_code == 404
    assert http.get(FS).json()["data"] == []

    records = Records()
    logger = logging.getLogger("modelyard.filesets")
    logger.addHandler(records)
    try:
        removed = http.app.state.sweeper.sweep()  # the unreachable area is logged and skipped
    finally:
        logger.removeHandler(records)
    assert removed == {"tmp": 0, "blob": 0}
    warnings = [r for r in records.records if r.levelno == logging.WARNING]
    assert any(r.getMessage() == "blob sweep failed" for r in warnings)
    for record in records.records:
        assert SECRET not in repr(record.__dict__)


def test_download_headers(client: Any) -> None:
    client.filesets.create("default", name="files")
    client.filesets.upload_file("default", "files", "dir/model.bin", b"0123456789")
    client.filesets.upload_file("default", "files", "dir/résumé ü.html", b"<script>alert(1)</script>")
    plain = 'attachment; filename="model.bin"'
    for method, extra, status in [("GET", {}, 200), ("HEAD", {}, 200), ("GET", {"Range": "bytes=2-5"}, 206)]:
        response = client.request(method, f"{FS}/files/-/dir/model.bin", headers=extra)
        assert response.status_code == status
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-disposition"] == plain
    response = client.request("GET", f"{FS}/files/-/dir/r%C3%A9sum%C3%A9%20%C3%BC.html")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == \
        "attachment; filename=\"r_sum_ _.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%BC.html"
