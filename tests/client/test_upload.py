"""upload_dir retries a file whose upload failed (the server or the network), and skips unchanged files."""

from __future__ import annotations

from pathlib import Path

import httpx

from modelyard.client import Modelyard
from modelyard.client.client import upload_dir


def test_a_failed_file_is_retried(live_server: str, tmp_path: Path) -> None:
    source = tmp_path / "upload"  # (tmp_path also holds the server's home)
    source.mkdir()
    (source / "a.bin").write_bytes(b"a" * 1000)
    (source / "b.bin").write_bytes(b"b" * 1000)
    real = httpx.Client(timeout=30)
    failures = {"left": 2}
    attempts: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            attempts.append(request.url.path.rsplit("/", 1)[-1])
            if failures["left"]:
                failures["left"] -= 1
                request.read()
                return httpx.Response(502, json={"detail": "fileset storage failed: simulated"})
        forwarded = real.build_request(request.method, request.url, headers=request.headers,
                                       content=request.read())
        response = real.send(forwarded)
        return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    with Modelyard(live_server, http_client=httpx.Client(transport=httpx.MockTransport(flaky))) as client:
        report = upload_dir(client, source, "default", "flaky", retries=3)
        assert sorted(report.transferred) == ["a.bin", "b.bin"]
        assert attempts == ["a.bin", "a.bin", "a.bin", "b.bin"]
        assert {f.path: f.size for f in client.filesets.list_files("default", "flaky").data} == {"a.bin": 1000,
                                                                                               "b.bin": 1000}
        again = upload_dir(client, source, "default", "flaky")
        assert again.transferred == [] and sorted(again.skipped) == ["a.bin", "b.bin"]
    real.close()
