"""A built-in engine started with ``--orphan-timeout`` stops itself once no owner (a ``GET /health``
with the ``X-Modelyard-Owner`` header) has looked at it for that long; other health checks do not count."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from modelyard.engine.process import EngineProcess, builtin_command, free_port
from modelyard.engine.server import OWNER_HEADER

TIMEOUT = 2.0


def _start(base: Path, log: Path) -> EngineProcess:
    port = free_port()
    argv = builtin_command(str(base), served_name="tiny", host="127.0.0.1", port=port, max_loras=2,
                           max_lora_rank=8, orphan_timeout=TIMEOUT)
    assert argv[-2:] == ["--orphan-timeout", str(TIMEOUT)]
    return EngineProcess(argv=argv, url=f"http://127.0.0.1:{port}", log_path=log).start()


def _ping(http: httpx.Client, process: EngineProcess, owner: bool) -> None:
    headers = {OWNER_HEADER: "server-test"} if owner else {}
    try:
        http.get(process.url + "/health", headers=headers)
    except httpx.HTTPError:
        pass  # it may be stopping


def _exited_within(process: EngineProcess, seconds: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if not process.alive():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_an_engine_nobody_owns_stops_itself(fixture_models: dict[str, Path], tmp_path: Path) -> None:
    owned = _start(fixture_models["base"], tmp_path / "owned.log")
    strangers = _start(fixture_models["base"], tmp_path / "strangers.log")  # only a load balancer looks
    try:
        owned.wait_healthy(120)
        strangers.wait_healthy(120)
        with httpx.Client(timeout=2.0) as http:
            started = time.monotonic()
            strangers_gone: float | None = None
            while time.monotonic() - started < 4.0:
                _ping(http, owned, owner=True)
                if strangers_gone is None:
                    _ping(http, strangers, owner=False)
                    if not strangers.alive():
                        strangers_gone = time.monotonic() - started
                time.sleep(0.5)
                assert owned.alive(), "an engine whose owner keeps checking it stopped"
        # owned's clock was reset by every ping; strangers' ran from its start
        assert strangers_gone is not None or _exited_within(strangers, 2.0) is not None, \
            "plain health checks kept an engine nobody owns running"

        gone_after = _exited_within(owned, 4.5)
        assert gone_after is not None, "an engine whose owner stopped checking kept running"
        assert gone_after > TIMEOUT - 0.5
        for process in (owned, strangers):
            assert process.proc is not None and process.proc.returncode == 0  # a clean exit, as on SIGTERM
            assert "no owner's health check" in process.log_path.read_text()
    finally:
        owned.stop()
        strangers.stop()
