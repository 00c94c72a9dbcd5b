"""Upload throughput: one large file through the files API, against writing and hashing it locally.

Starts its own server (``modelyard serve`` on a temporary home, SQLite, a free port), writes a file
of ``--size-mb`` MB of random bytes, then in the same run:

- ``raw``: reads the file, hashes it with sha256 and writes it to another local file (fsync at the
  end), the least work any upload must do on the server side;
- ``upload``: ``client.filesets.upload_file`` from the project's SDK, as a user calls it: the SDK
  hashes the file first (it announces the sha256) and then streams it; the server hashes and
  writes it again, and renames it into place;
- ``send``: the same call with ``sha256=`` given, so only the transfer and the server's work count.

With ``--concurrent N --each-mb M`` (the issue's 16 x 64 MB) N files are uploaded at once, each to its
own path, against N raw copies of the same files one after another on the same disk. With
``--storage s3`` the fileset lives in a bucket of moto's S3-protocol server (started here, in its own
process); the raw baseline stays a local write+hash of the same bytes.

Each is repeated ``--repeat`` times (best run reported: the machine is shared and noisy). CPU
seconds per GB are the server process's (``/proc`` via psutil, children included) and this
process's own (the client, and the raw copy). The server's HTTP parser is uvicorn's choice
(httptools when installed, else h11), printed as ``server_http``.

Last line: ``upload_mb_s=… send_mb_s=… raw_mb_s=… ratio=…`` (ratio = upload / raw).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def wait_up(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.2)


@contextmanager
def moto_bucket() -> Iterator[dict[str, str]]:
    """A bucket on moto's S3 server in its own process: the storage body for an ``s3`` fileset."""
    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/moto-api/", proc, "moto")
        boto3.client("s3", endpoint_url=url, aws_access_key_id="bench", aws_secret_access_key="bench",
                     region_name="us-east-1").create_bucket(Bucket="bench")
        yield {"type": "s3", "bucket": "bench", "endpoint_url": url}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def own_server(home: Path, s3: dict[str, str] | None = None) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_LOG_LEVEL": "WARNING"}
    if s3:
        env.update({"MODELYARD_S3_ACCESS_KEY_ID": "bench", "MODELYARD_S3_SECRET_ACCESS_KEY": "bench",
                    "MODELYARD_S3_ENDPOINT_URL": s3["endpoint_url"], "MODELYARD_S3_REGION": "us-east-1"})
    env.pop("MODELYARD_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/health", proc, "the bench server")
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
    parser.add_argument("--concurrent", type=int, default=1, help="files uploaded at once (each --each-mb)")
    parser.add_argument("--each-mb", type=int, default=64, help="size of each file with --concurrent > 1")
    parser.add_argument("--storage", choices=["local", "s3"], default="local", help="where the fileset lives")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the best is reported")
    parser.add_argument("--tmp", default=None, help="folder for the files, the copies and the server's home")
    args = parser.parse_args()
    count = max(args.concurrent, 1)
    each = (args.each_mb if count > 1 else args.size_mb) * MB
    size = each * count  # bytes moved per run
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-", dir=args.tmp) as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        sources = [folder / f"checkpoint-{i}.bin" for i in range(count)]
        expected = [make_file(source, each) for source in sources]
        s3 = stack.enter_context(moto_bucket()) if args.storage == "s3" else None
        url, server = stack.enter_context(own_server(folder / "home", s3))
        client = stack.enter_context(Modelyard(url, timeout=600))
        client.filesets.create("default", name="bench", **({"storage": s3} if s3 else {}))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=count))

        def each_file(fn: Callable[[int], None]) -> None:
            for future in [pool.submit(fn, i) for i in range(count)]:
                future.result()

        raws, uploads, sends = [], [], []
        for run in range(args.repeat):

            def raw() -> None:  # one after another: the disk's own speed for the same bytes
                for i, source in enumerate(sources):
                    target = folder / f"raw-{i}.bin"
                    assert raw_copy(source, target) == expected[i]
                    target.unlink()

            raws.append(measure(server, raw))

            def upload_one(i: int, announce: bool) -> None:
                entry = client.filesets.upload_file("default", "bench", f"checkpoint-{i}.bin", sources[i],
                                                    **({"sha256": expected[i]} if announce else {}))
                assert entry.sha256 == expected[i] and entry.size == each, entry

            uploads.append(measure(server, lambda: each_file(lambda i: upload_one(i, False))))
            sends.append(measure(server, lambda: each_file(lambda i: upload_one(i, True))))
            print(f"run {run + 1}: raw {size / MB / raws[-1].seconds:.1f} MB/s, upload "
                  f"{size / MB / uploads[-1].seconds:.1f} MB/s, send {size / MB / sends[-1].seconds:.1f} MB/s",
                  flush=True)
        if s3 is None:
            for digest in expected:  # content-addressed
                assert (folder / "home" / "blobs" / digest[:2] / digest).stat().st_size == each
        else:
            listed = {f.path: f.sha256 for f in client.filesets.list_files("default", "bench").data}
            assert listed == {f"checkpoint-{i}.bin": d for i, d in enumerate(expected)}, listed
    best_raw = min(raws, key=lambda r: r.seconds)
    best_upload = min(uploads, key=lambda r: r.seconds)
    best_send = min(sends, key=lambda r: r.seconds)
    # uvicorn's "auto" takes httptools when it is installed, else the pure-Python h11 parser
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    shape = f"{count} x {each // MB} MB at once" if count > 1 else f"{each // MB} MB"
    print(f"files={shape}  storage={args.storage}  repeat={args.repeat}  cores={os.cpu_count()}  "
          f"server_http={http}  (best of each)")
    print(line("raw", size, best_raw))
    print(line("upload", size, best_upload))
    print(line("send", size, best_send))
    raw_mb_s, upload_mb_s = size / MB / best_raw.seconds, size / MB / best_upload.seconds
    send_mb_s = size / MB / best_send.seconds
    print(f"upload_mb_s={upload_mb_s:.1f} send_mb_s={send_mb_s:.1f} raw_mb_s={raw_mb_s:.1f} "
          f"ratio={upload_mb_s / raw_mb_s:.2f}")


if __name__ == "__main__":
    main()
