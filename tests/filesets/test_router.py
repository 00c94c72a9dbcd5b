"""The files API through the SDK, on both databases: filesets, uploads that cannot corrupt, ranges."""

from __future__ import annotations

import hashlib

import pytest

from modelyard.client import (
    BadRequestError,
    ConflictError,
    Modelyard,
    NotFoundError,
    PayloadTooLargeError,
    UnprocessableEntityError,
)
from modelyard.config import Settings
from tests.filesets.helpers import blob_path, blobs_stored

FS = "/apis/files/v2/workspaces/default/filesets"


def test_fileset_crud_and_lists(client: Modelyard) -> None:
    created = client.filesets.create("default", name="weights", purpose="model", description="a checkpoint",
                                     metadata={"k": 1})
    assert created.storage.type == "local" and created.purpose == "model"
    assert created.metadata.model_dump() == {"dataset": None, "model": None, "environment": None, "k": 1}
    response = client.request("POST", FS, json={"name": "other"})
    assert response.status_code == 200  # as the reference answers
    for i in range(11):
        client.filesets.create("default", name=f"set-{i:02d}")
    page = client.filesets.list("default")
    assert page.pagination.page_size == 10 and page.pagination.total_results == 13
    assert [f.name for f in client.filesets.list("default", filters={"purpose": "model"})] == ["weights"]
    assert [f.name for f in client.filesets.list("default", filters={"storage_type": "s3"})] == []
    assert client.filesets.update("default", "weights", description="new").description == "new"
    with pytest.raises(ConflictError):
        client.filesets.create("default", name="weights")
    with pytest.raises(UnprocessableEntityError):
        client.filesets.create("default", name="Bad_Name")
    with pytest.raises(UnprocessableEntityError):
        client.filesets.create("default", name="x-set", storage={"type": "s3"})  # no bucket
    deleted = client.filesets.delete("default", "weights")
    assert deleted.name == "weights"
    with pytest.raises(NotFoundError):
        client.filesets.retrieve("default", "weights")
    with pytest.raises(NotFoundError):
        client.filesets.list("ghost-ws")


def test_upload_download_ranges_and_listing(client: Modelyard, settings: Settings) -> None:
    client.filesets.create("default", name="files")
    data = bytes(range(256)) * 1000
    entry = client.filesets.upload_file("default", "files", "sub/dir/data.bin", data)
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.file_ref == "default/files#sub/dir/data.bin" and entry.cache_status is None
    client.filesets.upload_file("default", "files", "config.json", b"{}")
    listed = client.filesets.list_files("default", "files")
    assert [(f.path, f.size) for f in listed.data] == [("config.json", 2), ("sub/dir/data.bin", len(data))]
    assert {f.cache_status for f in listed.data} == {"not_cacheable"}  # as the reference lists local files
    assert [f.path for f in client.filesets.list_files("default", "files", path="sub").data] == ["sub/dir/data.bin"]

    url = f"{FS}/files/-/sub/dir/data.bin"
    whole = client.request("GET", url)
    assert whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"] == f'"{entry.sha256}"'
    part = client.request("GET", url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert client.request("GET", url, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert client.request("GET", url, headers={"Range": f"bytes={len(data) - 3}-"}).content == data[-3:]
    with pytest.raises(Exception) as outside:
        client.request("GET", url, headers={"Range": f"bytes={len(data)}-"})
    assert outside.value.status_code == 416
    head = client.request("HEAD", url)
    assert head.headers["content-length"] == str(len(data)) and head.content == b""
    assert blob_path(settings, entry.sha256).read_bytes() == data  # stored once, under its sha256

    replaced = client.filesets.upload_file("default", "files", "config.json", b'{"a": 1}')
    assert client.request("GET", f"{FS}/files/-/config.json").content == b'{"a": 1}' and replaced.size == 8
    gone = client.request("DELETE", f"{FS}/files/-/config.json")
    assert gone.status_code == 200 and gone.json() == {  # the deleted file, as the reference answers
        "file_ref": "default/files#config.json", "file_url": f"{FS}/files/-/config.json", "path": "config.json",
        "size": 8, "cache_status": None, "sha256": replaced.sha256}
    with pytest.raises(NotFoundError):
        client.request("GET", f"{FS}/files/-/config.json")
    with pytest.raises(NotFoundError):
        client.filesets.delete_file("default", "files", "config.json")
    client.filesets.upload_file("default", "files", "again.txt", b"x")
    assert client.filesets.delete_file("default", "files", "again.txt").path == "again.txt"
    assert [f.path for f in client.filesets.list_files("default", "files").data] == ["sub/dir/data.bin"]
    client.filesets.delete("default", "files")
    assert blob_path(settings, entry.sha256).exists()  # the sweeper removes it, not the delete


def test_fileset_shape_project_and_newest_first(client: Modelyard) -> None:
    """Every key of a fileset, with the reference's defaults; ``project`` is kept; lists drop nulls and
    list the newest first unless asked otherwise."""
    created = client.request("POST", FS, json={"name": "plain"}).json()
    assert {k: created[k] for k in ("description", "metadata", "custom_fields", "project")} == {
        "description": "", "metadata": {"dataset": None, "model": None, "environment": None},
        "custom_fields": {}, "project": ""}
    client.filesets.create("default", name="second", project="nlp/team-a", custom_fields={"owner": "x"})
    assert client.filesets.retrieve("default", "second").project == "nlp/team-a"
    assert client.filesets.update("default", "second", project="asr").project == "asr"
    raw = client.request("GET", FS).json()
    assert raw["sort"] == "-created_at" and "filter" not in raw
    assert [f["name"] for f in raw["data"]] == ["second", "plain"]
    assert raw["data"][1]["metadata"] == {}  # its null members dropped, as in the reference's lists
    assert [f.name for f in client.filesets.list("default", sort="created_at")] == ["plain", "second"]


@pytest.mark.parametrize("path", ["a/%2E%2E/b", "a//b", "%2E/a", "a\\b", "a/%00b", "a/", "%2Fetc/passwd"])
def test_bad_paths_are_400(client: Modelyard, path: str) -> None:
    client.filesets.create("default", name="files")
    with pytest.raises(BadRequestError, match="File path|control character"):
        client.request("PUT", f"{FS}/files/-/{path}", content=b"x")


def test_a_wrong_digest_stores_nothing_and_keeps_the_previous_version(client: Modelyard, settings: Settings) -> None:
    client.filesets.create("default", name="files")
    client.filesets.upload_file("default", "files", "a.txt", b"version one")
    with pytest.raises(BadRequestError, match="sha256 mismatch"):
        client.filesets.upload_file("default", "files", "a.txt", b"version two", sha256="0" * 64)
    with pytest.raises(BadRequestError, match="sha256 mismatch"):
        client.request("PUT", f"{FS}/files/-/b.txt", content=b"abc",
                       headers={"Content-Digest": "sha-256=:" + "A" * 43 + "=:"})
    with pytest.raises(BadRequestError, match="Content-Digest"):
        client.request("PUT", f"{FS}/files/-/b.txt", content=b"abc", headers={"Content-Digest": "md5=:x:"})
    assert client.request("GET", f"{FS}/files/-/a.txt").content == b"version one"
    assert [f.path for f in client.filesets.list_files("default", "files").data] == ["a.txt"]
    assert blobs_stored(settings) == [hashlib.sha256(b"version one").hexdigest()]  # no temporaries left behind


def test_files_over_the_limit_are_413(client: Modelyard, settings: Settings) -> None:
    settings.max_file_size = 1000
    client.filesets.create("default", name="files")
    with pytest.raises(PayloadTooLargeError, match="limit"):
        client.filesets.upload_file("default", "files", "big.bin", b"x" * 1001)
    assert client.filesets.list_files("default", "files").data == []


def test_a_fileset_in_use_cannot_be_deleted(client: Modelyard) -> None:
    client.filesets.create("default", name="ckpt")
    client.filesets.upload_file("default", "ckpt", "config.json", b"{}")
    client.models.create("default", name="m1", fileset="default/ckpt")
    with pytest.raises(ConflictError, match="used by model 'default/m1'"):
        client.filesets.delete("default", "ckpt")
    client.models.delete("default", "m1")
    client.filesets.delete("default", "ckpt")


def test_a_file_missing_from_storage_is_a_clear_502(client: Modelyard, settings: Settings) -> None:
    client.filesets.create("default", name="files")
    entry = client.filesets.upload_file("default", "files", "a.bin", b"abc")
    blob_path(settings, entry.sha256).unlink()  # removed behind the server's back
    with pytest.raises(Exception) as err:
        client.request("GET", f"{FS}/files/-/a.bin")
    assert err.value.status_code == 502 and "missing from its storage" in str(err.value)
