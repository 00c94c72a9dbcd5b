"""Several ``modelyard serve`` processes on one PostgreSQL database and a moto S3 server: what the
README's scaling recipe runs, on one machine. Used by the scale-out tests and ``bench/scale_out.py``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx
import sqlalchemy as sa
from cryptography.fernet import Fernet

from modelyard.client import Modelyard
from modelyard.client.client import upload_dir
from modelyard.client.credentials import read_credentials

PG_ADMIN_URL = os.environ.get("MODELYARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ADAPTERS = ("pirate", "chef", "space")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], object], timeout: float = 60.0, what: str = "a condition", every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Server:
    name: str
    home: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Cluster:
    """``size`` server processes sharing a fresh PostgreSQL database, a secret key and an S3 bucket."""

    root: Path
    size: int = 3
    lease_seconds: float = 3.0
    backend: str = "postgresql"
    """``postgresql`` (a fresh database on the local server; changes reach the processes by NOTIFY) or
    ``sqlite`` (one file shared by the processes; changes are found by polling)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    servers: list[Server] = field(default_factory=list)
    database: str = ""
    s3_url: str = ""
    bucket: str = ""
    _moto: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        try:
            self._start_database()
            self._start_s3()
            self.key = Fernet.generate_key().decode()
            for i in range(self.size):
                name = "ABCDEFGH"[i]
                server = Server(name, self.root / f"home-{name}", free_port(), self.root / f"server-{name}.log")
                self.servers.append(server)
                self.start(server)
                if i == 0:
                    self.api_key = read_credentials(server.home)["default"]["api_key"]
        except BaseException:
            self.__exit__()
            raise
        return self

    def env(self, server: Server) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
        env.update({
            "MODELYARD_HOME": str(server.home), "MODELYARD_DATABASE_URL": self.database_url,
            "MODELYARD_SECRET_KEY": self.key, "MODELYARD_SUPERVISOR_INTERVAL": "0.5",
            "MODELYARD_LEASE_SECONDS": str(self.lease_seconds), "MODELYARD_ENGINE_START_TIMEOUT": "120",
            "MODELYARD_S3_ENDPOINT_URL": self.s3_url, "MODELYARD_S3_ACCESS_KEY_ID": "testing",
            "MODELYARD_S3_SECRET_ACCESS_KEY": "testing", "MODELYARD_S3_REGION": "us-east-1",
            "MODELYARD_USAGE_FLUSH_INTERVAL": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self, server: Server) -> None:
        with open(server.log, "ab") as out:
            server.proc = subprocess.Popen(
                [sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(server.port)],
                env=self.env(server), stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: server.up() or server.proc.poll() is not None, 60, f"server {server.name}")
        assert server.proc.poll() is None, server.log.read_text()[-3000:]

    def kill(self, server: Server) -> None:
        """``kill -9``: no clean stop, no lease given up."""
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)

    def client(self, server: Server) -> Modelyard:
        return Modelyard(server.url, api_key=self.api_key)

    def register(self, fixture_models: dict[str, Path]) -> None:
        """The fixture checkpoint and its adapters, registered through the first server."""
        self.register_checkpoint(fixture_models["base"], {a: fixture_models[a] for a in ADAPTERS})

    def register_checkpoint(self, base: Path, adapters: dict[str, Path]) -> None:
        """A checkpoint (model ``tiny``) and adapters (by name) as S3 filesets, registered through the
        first server."""
        storage = {"type": "s3", "bucket": self.bucket, "endpoint_url": self.s3_url}
        with self.client(self.servers[0]) as ours:
            for name, folder in (("tiny-files", base), *((f"{n}-files", d) for n, d in adapters.items())):
                ours.filesets.create("default", name=name, storage=storage)
                upload_dir(ours, folder, "default", name)
            ours.models.create("default", name="tiny", fileset="default/tiny-files")
            for name in adapters:
                ours.adapters.create("default", model="default/tiny", name=name, fileset=f"{name}-files",
                                     finetuning_type="lora")

    def replicas(self) -> list[dict[str, object]]:
        """The replica rows, as the database has them."""
        with sa.create_engine(self.database_url).connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(
                "SELECT endpoint_id, url, owner, record FROM endpoint_replicas ORDER BY serial"))]

    def lease_owner(self, endpoint_id: str) -> str | None:
        with sa.create_engine(self.database_url).connect() as conn:
            return conn.execute(sa.text("SELECT owner FROM endpoint_leases WHERE endpoint_id = :id"),
                                {"id": endpoint_id}).scalar()

    def owner_server(self, endpoint_id: str) -> Server:
        owner = self.lease_owner(endpoint_id) or ""
        pid = int(owner.split(":")[1])
        return next(s for s in self.servers if s.proc is not None and s.proc.pid == pid)

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in self.servers:
            if server.proc is not None:
                try:
                    server.proc.wait(30)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
        if self._moto is not None:
            self._moto.terminate()
            self._moto.wait(10)
        if self.database:
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            admin.dispose()

    def _start_database(self) -> None:
        if self.backend == "sqlite":
            self.database_url = f"sqlite:///{self.root / 'modelyard.db'}"
            return
        self.database = f"modelyard_scale_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()
        self.database_url = sa.engine.make_url(PG_ADMIN_URL).set(database=self.database).render_as_string(
            hide_password=False)

    def _start_s3(self) -> None:
        import boto3

        port = free_port()
        with open(self.root / "moto.log", "wb") as out:
            self._moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                          stdout=out, stderr=subprocess.STDOUT)
        self.s3_url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                httpx.get(self.s3_url + "/moto-api/", timeout=1)
                return True
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "moto's S3 server")
        self.bucket = f"modelyard-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=self.bucket)


def engine_pids(marker: str) -> set[int]:
    """Engine processes whose command line contains ``marker`` (e.g. a served name or a home folder)."""
    # "[m]": a pgrep running at the same time (another thread's) does not match its own pattern
    out = subprocess.run(["pgrep", "-f", f"[m]odelyard\\.engine .*{marker}"], capture_output=True, text=True,
                         check=False).stdout
    return {int(p) for p in out.split()}
