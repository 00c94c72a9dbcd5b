"""The ``remote`` backend against real built-in engine processes this test runs as "someone else's"
servers: it checks, adopts and forgets them, and never stops one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.config import Settings
from modelyard.engine.backends import BackendError, Backends, ReplicaSpec
from modelyard.engine.backends.remote import RemoteBackend, RemoteHandle
from modelyard.engine.process import EngineProcess, builtin_command, free_port


def _start(base: Path, log: Path, *, wait: bool = True) -> EngineProcess:
    port = free_port()
    argv = builtin_command(str(base), served_name="tiny", host="127.0.0.1", port=port, max_loras=2, max_lora_rank=8)
    process = EngineProcess(argv=argv, url=f"http://127.0.0.1:{port}", log_path=log).start()
    try:
        if wait:
            process.wait_healthy(120)
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def outside(fixture_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """A built-in engine someone else runs (this test starts and stops it, never the backend)."""
    process = _start(fixture_models["base"], tmp_path_factory.mktemp("remote") / "outside.log")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def backend(tmp_path: Path) -> RemoteBackend:
    made = Backends(Settings(home=tmp_path / "home")).get("remote")
    assert isinstance(made, RemoteBackend)
    assert made.name == "remote" and made.manages_lifecycle is False
    return made


def _spec(url: str | None, start_timeout: float = 30.0) -> ReplicaSpec:
    return ReplicaSpec(endpoint_id="endpoint-remote", served_name="tiny", engine="remote", serial=1, url=url,
                       start_timeout=start_timeout)


def test_launch_check_record_and_stop_leaves_the_server_running(
    backend: RemoteBackend, outside: EngineProcess
) -> None:
    async def scenario() -> None:
        handle = await backend.launch(_spec(outside.url + "/"))
        assert isinstance(handle, RemoteHandle)
        assert handle.backend == "remote" and handle.url == outside.url and handle.node == "127.0.0.1"
        assert handle.models == ["tiny"] and handle.pid is None
        assert handle.alive() and await handle.check() and handle.problem is None
        assert handle.record() == {"url": outside.url, "served_name": "tiny"}
        await handle.stop()
        assert not handle.alive() and not await handle.check()

    asyncio.run(scenario())
    assert outside.alive()
    assert httpx.get(outside.url + "/health", timeout=5).status_code == 200


def test_adopt_from_record(backend: RemoteBackend, outside: EngineProcess) -> None:
    async def scenario() -> None:
        adopted = await backend.adopt(_spec(outside.url), {"url": outside.url})
        assert isinstance(adopted, RemoteHandle) and adopted.alive() and adopted.url == outside.url
        assert await adopted.check()
        # the endpoint now names another server: the old record is not it
        assert await backend.adopt(_spec("http://127.0.0.1:1"), {"url": outside.url}) is None
        assert await backend.adopt(_spec(outside.url), {}) is None
        assert await backend.adopt(_spec(outside.url), {"url": "ftp://127.0.0.1"}) is None

    asyncio.run(scenario())


def test_a_server_that_goes_away_fails_its_check_with_the_reason(
    backend: RemoteBackend, fixture_models: dict[str, Path], tmp_path: Path
) -> None:
    process = _start(fixture_models["base"], tmp_path / "doomed.log", wait=False)
    try:
        handle = asyncio.run(backend.launch(_spec(process.url)))  # asks again until the server is up
        assert handle.alive()
        record = handle.record()
        assert asyncio.run(handle.check())
        process.stop(grace=2.0)
        assert not asyncio.run(handle.check())
        assert not handle.alive()
        assert handle.problem is not None and process.url in handle.problem
        assert "connection refused" in handle.problem
        assert asyncio.run(backend.adopt(_spec(process.url), record)) is None
    finally:
        process.stop()


def test_nobody_listening_is_a_backend_error_naming_the_url_in_bounded_time(backend: RemoteBackend) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BackendError) as refused:
        asyncio.run(backend.launch(_spec(url, start_timeout=1.5)))
    assert time.monotonic() - started < 6
    assert url in str(refused.value) and "connection refused" in str(refused.value)


@pytest.mark.parametrize("url", [None, "", "ftp://127.0.0.1:8000", "127.0.0.1:8000", "http://", "http://h:port"])
def test_a_missing_or_non_http_url_is_a_backend_error(backend: RemoteBackend, url: str | None) -> None:
    started = time.monotonic()
    with pytest.raises(BackendError, match="URL|url"):
        asyncio.run(backend.launch(_spec(url)))
    assert time.monotonic() - started < 1
