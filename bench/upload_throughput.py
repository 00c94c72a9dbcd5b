"""Upload throughput: one large file through the files API, against writing and hashing it locally.

Starts its own server (``modelyard serve`` on a temporary home, SQLite, a free port), writes a file
of ``--size-mb`` MB of random bytes, then in the same run:

- ``raw``: reads the file, hashes it with sha256 and writes it to another local file (fsync at the
  end), the least work any upload must do on the server side;
- ``upload``: ``client.filesets.upload_file`` from the project's SDK, as a user calls it: the SDK
  hashes the file first (it announces the sha256) and then streams it; the server hashes and
  writes it again, and renames it into place;
- ``send``: the same call with ``sha256=`` given, so only the transfer and the server's work count.

Each is repeated ``--repeat`` times (best run reported: the machine is shared and noisy). CPU
seconds per GB are the server process's (``/proc`` via psutil, children included) and this
process's own (the client, and the raw copy). The server's HTTP parser is uvicorn's choice
(httptools when installed, else h11), printed as ``server_http``.

Last line: ``upload_mb_s=… raw_mb_s=… upload_vs_raw=…``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from modelyard.client import Modelyard
from modelyard.engine.process import free_port

MB = 1_000_000


@dataclass
class Run:
    seconds: float
    server_cpu: float
    client_cpu: float


@contextmanager
def own_server(home: Path) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_LOG_LEVEL": "WARNING"}
    env.pop("MODELYARD_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the bench server did not start")
            time.sleep(0.2)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def measure(server: psutil.Process, work: Callable[[], None]) -> Run:
    me = psutil.Process()
    server_before, client_before = cpu_of(server), cpu_of(me)
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return Run(seconds, cpu_of(server) - server_before, cpu_of(me) - client_before)


def raw_copy(source: Path, target: Path) -> str:
    """Read, sha256 and write ``source`` to ``target`` (fsync'd): the floor for an upload."""
    digest = hashlib.sha256()
    block = bytearray(8 << 20)
    view = memoryview(block)
    with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as out:
        while n := src.readinto(block):
            digest.update(view[:n])
            out.write(view[:n])
        os.fsync(out.fileno())
    return digest.hexdigest()


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        written = index = 0
        while written < size:
            # a different block each time (sha256 and any dedup see new bytes), cheaply
            shift = (index * 4099) % len(block)
            piece = (block[shift:] + block[:shift])[: size - written]
            index += 1
            digest.update(piece)
            out.write(piece)
            written += len(piece)
    return digest.hexdigest()


def line(name: str, size: int, run: Run) -> str:
    gb = size / 1e9
    return (f"{name:7s} {size / MB / run.seconds:8.1f} MB/s  {run.seconds:6.2f} s  "
            f"server_cpu_s_per_gb={run.server_cpu / gb:5.2f}  client_cpu_s_per_gb={run.client_cpu / gb:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256, help="file size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the best is reported")
    parser.add_argument("--tmp", default=None, help="folder for the file, the copy and the server's home")
    args = parser.parse_args()
    size = args.size_mb * MB
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-", dir=args.tmp) as tmp:
        folder = Path(tmp)
        source = folder / "checkpoint.bin"
        expected = make_file(source, size)
        with own_server(folder / "home") as (url, server), Modelyard(url, timeout=600) as client:
            client.filesets.create("default", name="bench")
            raws, uploads, sends = [], [], []
            for i in range(args.repeat):
                target = folder / f"raw-{i}.bin"

                def raw(target: Path = target) -> None:
                    assert raw_copy(source, target) == expected

                raws.append(measure(server, raw))
                target.unlink()

                def upload() -> None:
                    entry = client.filesets.upload_file("default", "bench", "checkpoint.bin", source)
                    assert entry.sha256 == expected and entry.size == size, entry

                uploads.append(measure(server, upload))

                def send() -> None:
                    entry = client.filesets.upload_file("default", "bench", "checkpoint.bin", source,
                                                        sha256=expected)
                    assert entry.sha256 == expected and entry.size == size, entry

                sends.append(measure(server, send))
                print(f"run {i + 1}: raw {size / MB / raws[-1].seconds:.1f} MB/s, upload "
                      f"{size / MB / uploads[-1].seconds:.1f} MB/s, send {size / MB / sends[-1].seconds:.1f} MB/s",
                      flush=True)
            stored = folder / "home" / "blobs" / expected[:2] / expected  # content-addressed
            assert stored.stat().st_size == size
    best_raw = min(raws, key=lambda r: r.seconds)
    best_upload = min(uploads, key=lambda r: r.seconds)
    best_send = min(sends, key=lambda r: r.seconds)
    # uvicorn's "auto" takes httptools when it is installed, else the pure-Python h11 parser
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    print(f"size={args.size_mb} MB  repeat={args.repeat}  cores={os.cpu_count()}  server_http={http}  (best of each)")
    print(line("raw", size, best_raw))
    print(line("upload", size, best_upload))
    print(line("send", size, best_send))
    raw_mb_s, upload_mb_s = size / MB / best_raw.seconds, size / MB / best_upload.seconds
    send_mb_s = size / MB / best_send.seconds
    print(f"upload_mb_s={upload_mb_s:.1f} send_mb_s={send_mb_s:.1f} raw_mb_s={raw_mb_s:.1f} "
          f"upload_vs_raw={upload_mb_s / raw_mb_s:.2f}")


if __name__ == "__main__":
    main()
