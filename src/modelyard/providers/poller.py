"""The background pass that asks every provider's ``/v1/models`` (with its key and extra headers) and
fills ``served_models``, ``status`` and ``status_message``.

It runs every ``provider_poll_interval`` seconds and at once when a provider is created or replaced
(:meth:`ProviderPoller.wake`). ``served_models`` maps ``ws/<id>`` to each ``id`` the provider lists
(only those of ``enabled_models`` when that is set), plus every registry model that names the
provider in ``model_providers`` and whose ``api_endpoint.model_id`` (or name) the provider lists. A
row is written only when something changed; a provider whose configuration changed while it was
being asked is left for the next pass. An error message names the URL and the cause, never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import Database, utcnow
from modelyard.db.session import in_db
from modelyard.gateway.upstream import http_client, join
from modelyard.providers import auth_header
from modelyard.providers.service import ProviderKeyError, api_key, endpoint_of

log = logging.getLogger("modelyard.providers")
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _Probe:
    id: str
    workspace: str
    name: str
    host_url: str
    headers: dict[str, str]
    enabled: tuple[str, ...] | None
    problem: str | None  # the key could not be read


@dataclass(frozen=True)
class _Result:
    probe: _Probe
    ids: tuple[str, ...] | None
    message: str


class ProviderPoller:
    def __init__(self, db: Database, settings: Settings, state: Any) -> None:
        self.db, self.settings, self.state = db, settings, state
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Poll soon; callable from any thread (sync routes run in worker threads)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="provider-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping anyway
                await self._task
        client = getattr(self.state, "upstream_http", None)
        if client is not None:
            self.state.upstream_http = None
            await client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database outage: try again next pass
                log.warning("provider poll failed", extra={"error": type(exc).__name__})
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.provider_poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def poll_once(self) -> None:
        self._wake.clear()
        probes = await in_db(self.db, self._probes)
        if not probes:
            return
        results = await asyncio.gather(*(self._ask(p) for p in probes))
        await in_db(self.db, lambda s: self._record(s, results), write=True)

    def _probes(self, session: Session) -> list[_Probe]:
        keyring = self.state.keyring
        out = []
        for row in session.scalars(select(tables.ModelProvider).order_by(tables.ModelProvider.created_at)):
            if endpoint_of(row) is not None:
                continue  # one of our endpoints: its status follows the endpoint, not a probe
            headers = {**(row.default_extra_headers or {}), **(row.required_extra_headers or {})}
            problem = None
            try:
                key = api_key(session, keyring, row)
                if key:
                    name, value = auth_header.render(row.auth_header_format, key)
                    headers = {k: v for k, v in headers.items() if k.lower() != name.lower()} | {name: value}
            except (ProviderKeyError, auth_header.AuthHeaderError) as exc:
                problem = str(exc)
            enabled = tuple(row.enabled_models) if row.enabled_models is not None else None
            out.append(_Probe(row.id, row.workspace, row.name, row.host_url, headers, enabled, problem))
        return out

    async def _ask(self, probe: _Probe) -> _Result:
        if probe.problem is not None:
            return _Result(probe, None, probe.problem)
        url = join(probe.host_url, "/v1/models")
        try:
            response = await http_client(self.state).get(url, headers=probe.headers, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return _Result(probe, None, f"GET {url} failed: {type(exc).__name__}: {exc}"[:1000])
        if response.status_code != 200:
            return _Result(probe, None, f"GET {url} answered {response.status_code}: {response.text[:300]}"[:1000])
        try:
            data = response.json().get("data")
            ids = tuple(str(item["id"]) for item in data if isinstance(item, dict) and "id" in item)
        except (ValueError, AttributeError, TypeError):
            return _Result(probe, None, f"GET {url} did not answer an OpenAI model list")
        if probe.enabled is not None:
            ids = tuple(i for i in ids if i in probe.enabled)
        return _Result(probe, ids, "")

    def _record(self, session: Session, results: list[_Result]) -> None:
        with_providers = [m for m in session.scalars(select(tables.Model)) if m.model_providers]
        for result in results:
            probe = result.probe
            row = session.get(tables.ModelProvider, probe.id)
            if row is None or row.host_url != probe.host_url:
                continue  # deleted or changed meanwhile
            if result.ids is None:
                status, served = "ERROR", row.served_models
            else:
                status, served = "READY", self._served(with_providers, row, result.ids)
            if (row.status, row.status_message, row.served_models) != (status, result.message, served):
                row.status, row.status_message, row.served_models = status, result.message, served
                row.updated_at = utcnow()
                log.info("provider status", extra={"provider": f"{row.workspace}/{row.name}", "status": status})

    @staticmethod
    def _served(models: list[tables.Model], row: tables.ModelProvider, ids: tuple[str, ...]) -> list[dict[str, str]]:
        served: dict[str, str] = {f"{row.workspace}/{i}": i for i in ids}
        qualified = f"{row.workspace}/{row.name}"
        for model in models:
            if not any(ref == qualified or (ref == row.name and model.workspace == row.workspace)
                       for ref in model.model_providers or []):
                continue
            name = (model.api_endpoint or {}).get("model_id") or model.name
            if name in ids:
                served[f"{model.workspace}/{model.name}"] = name
        return [{"model_entity_id": k, "served_model_name": v} for k, v in served.items()]
