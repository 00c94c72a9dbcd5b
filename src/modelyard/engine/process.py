"""Engine processes: how to start one (built-in or vLLM), wait until it is healthy, and stop it.

Each engine runs in its own session (process group) so that stopping it also stops the helper
processes vLLM forks; its output goes to a log file whose tail is quoted when it fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class EngineStartError(RuntimeError):
    """The engine exited or did not become healthy in time; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def builtin_command(
    model: str, *, served_name: str, host: str, port: int, max_loras: int, max_lora_rank: int,
    max_cpu_loras: int | None = None, dtype: str | None = None, kv_cache_bytes: int | None = None,
    orphan_timeout: float | None = None,
) -> list[str]:
    """argv for the built-in CPU engine (``python -m modelyard.engine``); with ``orphan_timeout`` it
    exits once no owner's health check (``X-Modelyard-Owner``) arrived for that many seconds."""
    argv = [sys.executable, "-m", "modelyard.engine", "--model", model, "--served-model-name", served_name,
            "--host", host, "--port", str(port), "--max-loras", str(max_loras),
            "--max-lora-rank", str(max_lora_rank)]
    if max_cpu_loras is not None:
        argv += ["--max-cpu-loras", str(max_cpu_loras)]
    if dtype is not None:
        argv += ["--dtype", dtype]
    if kv_cache_bytes is not None:
        argv += ["--kv-cache-bytes", str(kv_cache_bytes)]
    if orphan_timeout is not None:
        argv += ["--orphan-timeout", str(orphan_timeout)]
    return argv


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@dataclass
class EngineProcess:
    """One running engine replica."""

    argv: list[str]
    url: str
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> EngineProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # argv built by us, never a shell
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float) -> None:
        """Block until ``GET /health`` answers 200; :class:`EngineStartError` if it exits or times out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                if not self.alive():
                    code = self.proc.returncode if self.proc else None
                    raise EngineStartError(
                        f"engine exited with code {code} before it was ready; last lines of {self.log_path}:\n"
                        + _tail(self.log_path)
                    )
                try:
                    if http.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EngineStartError(
                        f"engine did not become healthy within {timeout:.0f}s; last lines of {self.log_path}:\n"
                        + _tail(self.log_path)
                    )
                time.sleep(0.25)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the engine's process group, then SIGKILL whatever is left after ``grace`` seconds."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # also reaps helpers that outlived the leader
        except ProcessLookupError:
            pass
        proc.wait()
