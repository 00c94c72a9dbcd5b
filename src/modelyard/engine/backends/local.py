"""Replicas as child processes of this server, on this machine (``placement: local``).

Each engine runs in its own process group (so stopping it stops the helpers vLLM forks) with its
output in a log file. A record names the pid, the process start time and the URL, so a server started
again after a crash (or another server process on the same machine) can adopt a replica that still
answers, and never mistakes a reused pid for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any, ClassVar

import anyio

from modelyard.config import Settings
from modelyard.engine.backends.base import Backend, BackendError, ReplicaHandle, ReplicaSpec, answers_health
from modelyard.engine.backends.engines import ENGINES
from modelyard.engine.process import EngineProcess, EngineStartError, free_port


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"modelyard.engine" in cmdline or b"vllm" in cmdline


class LocalHandle(ReplicaHandle):
    backend: ClassVar[str] = "local"

    def __init__(self, process: EngineProcess | None, url: str, *, pid: int | None = None,
                 log_path: Path | None = None) -> None:
        self.process = process
        self.url = url
        self._pid = process.pid if process is not None else pid
        self._started = _start_time(self._pid) if self._pid else None
        self.log_path = log_path or (process.log_path if process is not None else None)
        self.node = os.uname().nodename

    @property
    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.alive()
        # adopted: not our child, so poll() is not available; the pid must still be the same process
        return self._pid is not None and _start_time(self._pid) == self._started and self._started is not None

    async def stop(self) -> None:
        if self.process is not None:
            await anyio.to_thread.run_sync(self.process.stop)
            return
        if self._pid is None or not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signal.SIGTERM)
        for _ in range(100):
            if not self.alive():
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signal.SIGKILL)

    def stop_now(self) -> None:
        """SIGKILL the process group without waiting (a start abandoned while the server stops)."""
        if self.process is not None:
            self.process.stop(grace=2.0)

    def record(self) -> dict[str, Any]:
        return {"pid": self._pid, "started": self._started, "url": self.url,
                "log": str(self.log_path) if self.log_path else None, "node": self.node}


class LocalBackend(Backend):
    name: ClassVar[str] = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def launch(self, spec: ReplicaSpec) -> ReplicaHandle:
        if spec.engine not in ENGINES:
            raise BackendError(f"unknown engine '{spec.engine}'")
        if not spec.model_path:
            raise BackendError("a local replica needs the model's checkpoint folder")
        port = free_port()
        argv, env = ENGINES[spec.engine].command(spec, "127.0.0.1", port, self.settings)
        log_path = spec.log_path or self.settings.home / "logs" / "engines" / f"{spec.endpoint_id}-{spec.serial}.log"
        process = EngineProcess(argv=argv, url=f"http://127.0.0.1:{port}", log_path=log_path, env=env)
        process.start()  # a fork and exec (milliseconds), on the loop: no cancellation can lose the child
        handle = LocalHandle(process, process.url)
        handle.owner = spec.owner
        try:
            await anyio.to_thread.run_sync(process.wait_healthy, spec.start_timeout)
        except asyncio.CancelledError:
            process.stop(grace=2.0)  # abandoned (the server is stopping): leave no engine behind
            raise
        except EngineStartError as exc:
            raise BackendError(str(exc)) from None
        except BaseException:
            await handle.stop()
            raise
        return handle

    async def adopt(self, spec: ReplicaSpec, record: dict[str, Any]) -> ReplicaHandle | None:
        pid, url = record.get("pid"), record.get("url")
        if not isinstance(pid, int) or not isinstance(url, str) or record.get("node") != os.uname().nodename:
            return None
        if _start_time(pid) != record.get("started") or not _ours(pid):
            return None
        log = record.get("log")
        handle = LocalHandle(None, url, pid=pid, log_path=Path(log) if log else None)
        handle.owner = spec.owner
        return handle if await answers_health(url, spec.owner) else None
