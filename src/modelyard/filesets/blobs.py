"""Blob housekeeping: the sweeper, and moving files of the old per-path layout into blobs.

The sweeper runs when the server starts and every ``MODELYARD_SWEEP_INTERVAL`` seconds. In each blob
area (local disk, and every S3 bucket/prefix a fileset ever used: table ``blob_areas``) it
removes temporaries older than ``MODELYARD_BLOB_GRACE`` (an upload killed with the server) and blobs
that no file row references, once they were seen unreferenced for the grace period and were written
longer ago than that: an upload publishes its blob just before its row commits, and a download that
has just started keeps its blob. Deleting a file or a fileset only deletes rows; the sweeper does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI

from modelyard.config import Settings
from modelyard.db.engine import Database, utcnow
from modelyard.filesets import service, store
from modelyard.storage import blob_area

log = logging.getLogger("modelyard.filesets")


class Sweeper:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.areas: dict[str, dict[str, Any]] = {"local": {"type": "local"}}  # area key -> a storage in it
        self.marks: dict[str, dict[str, float]] = {}  # area key -> sha256 -> first seen unreferenced

    def sweep(self) -> dict[str, int]:
        """One pass over every blob area; returns what it removed."""
        home = self.settings.home
        with self.db.session() as session:
            for storage in store.storages(session):
                self.areas.setdefault(blob_area(home, storage), storage)
            self.areas.update(store.areas(session))
            referenced: dict[str, set[str]] = {}
            for storage, sha in store.referenced_blobs(session):
                referenced.setdefault(blob_area(home, storage), set()).add(sha)
        total = {"tmp": 0, "blob": 0}
        for area, storage in list(self.areas.items()):
            try:
                blobs = service.blob_store(self.settings, storage)
                removed = blobs.sweep(referenced.get(area, set()), self.settings.blob_grace,
                                      self.marks.setdefault(area, {}))
            except Exception as exc:  # noqa: BLE001 - one unreachable bucket must not stop the rest
                log.warning("blob sweep failed", extra={"area": area.split("|")[0], "error": service._describe(exc)})
                continue
            for kind, count in removed.items():
                total[kind] += count
        if total["tmp"] or total["blob"]:
            log.info("blob sweep", extra={"temporaries": total["tmp"], "blobs": total["blob"]})
        return total

    def adopt_legacy(self) -> None:
        """Move the files of filesets still in the old layout (``<root>/<ws>/<name>/<path>``) into blobs,
        by the sha256 their rows hold, then mark the fileset as blob-backed (migration 0004)."""
        with self.db.session(write=True) as session:  # areas of filesets made before blob_areas existed
            known = store.areas(session)
            for storage in store.storages(session):
                key = blob_area(self.settings.home, storage)
                if key not in known:
                    store.remember_area(session, key, storage, utcnow())
                    known[key] = storage
        with self.db.session() as session:
            rows = store.legacy(session)
            files = {row.id: [(f.path, f.sha256) for f in store.files(session, row.id)] for row in rows}
        for row in rows:
            try:
                old = service.file_store(self.settings, row)
                blobs = service.blob_store(self.settings, row.storage)
                for path, sha in files[row.id]:
                    if blobs.exists(sha):
                        continue
                    if old.exists(path):
                        blobs.put_file(old._full(path), sha, move=old.local)
                    else:
                        log.warning("a listed file was missing when moved into blobs",
                                    extra={"fileset": f"{row.workspace}/{row.name}", "path": path})
                with self.db.session(write=True) as session:
                    fresh = session.get(type(row), row.id)
                    if fresh is not None:
                        fresh.layout = 2
                old.delete_all()
                log.info("fileset moved into blobs", extra={"fileset": f"{row.workspace}/{row.name}"})
            except Exception as exc:  # noqa: BLE001 - retried at the next start
                log.warning("could not move a fileset into blobs",
                            extra={"fileset": f"{row.workspace}/{row.name}", "error": service._describe(exc)})

    async def run(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(self.sweep)
            except Exception as exc:  # noqa: BLE001 - e.g. the database is down: try again later
                log.warning("blob sweep failed", extra={"error": service._describe(exc)})
            await asyncio.sleep(self.settings.sweep_interval)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's lifespan (after the database is migrated): old-layout files are moved into
    blobs before the first request, then the sweeper runs in the background."""
    sweeper = Sweeper(app.state.db, app.state.settings)
    app.state.sweeper = sweeper
    await anyio.to_thread.run_sync(sweeper.adopt_legacy)
    task = asyncio.create_task(sweeper.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
