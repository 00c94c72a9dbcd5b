"""Endpoint rules: creation, state changes, and attaching adapters (Together's rules and messages).

Database work happens in short transactions on worker threads (``in_db``); loading adapters into
engines happens between them, under the endpoint's runtime lock, so no transaction is held open
while an engine works and no attach races a replica that is starting.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
from sqlalchemy.orm import Session

from modelyard.auth.principal import Access
from modelyard.config import Settings
from modelyard.db import tables
from modelyard.db.engine import Database, utcnow
from modelyard.db.session import in_db
from modelyard.endpoints import store
from modelyard.endpoints.schemas import (
    AdapterRemoved,
    AttachedAdapter,
    AttachedAdapterList,
    Autoscaling,
    CreateEndpointRequest,
    Endpoint,
    EndpointList,
    Hardware,
    HardwareAvailability,
    HardwareList,
    HardwarePricing,
    HardwareSpecs,
    UpdateEndpointRequest,
)
from modelyard.endpoints.supervisor import AdapterWant, Supervisor, adapter_wants
from modelyard.engine.adapter_files import read_adapter_config
from modelyard.engine.backends import ENGINES, REMOTE
from modelyard.engine.client import AdapterError, EngineError
from modelyard.errors import ApiError
from modelyard.filesets import store as fileset_store
from modelyard.models import store as model_store
from modelyard.providers import service as providers
from modelyard.storage import FilesetMissing

T = TypeVar("T")

# Together's troubleshooting messages, word for word (seeds/004).
BAD_FORMAT = "model_id must be in format \u2018endpoint_model_name:adapter_name\u2019"  # the seed's quotes
NAME_MISMATCH = "endpoint name in model_id does not match endpoint"
NO_MODEL = "Could not find model"
NO_ENDPOINT = "No endpoint with this id exists"
NO_LORA = "endpoint does not have LoRA enabled"
INCOMPATIBLE = "adapter base model is not compatible with endpoint model"
BOUND_ELSEWHERE = "adapter is already bound to endpoint"
NOT_BOUND = "adapter is not bound to endpoint"
NOT_DEDICATED = "new_lora_model must be a dedicated endpoint"
PUBLIC = "new_lora_model cannot be a public dedicated endpoint"


# ----- hardware --------------------------------------------------------------------------------


def _gpus() -> list[tuple[str, float]]:
    """(name, memory GB) for each GPU ``nvidia-smi`` reports; none when there is no driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, memory = line.rpartition(",")
        try:
            gpus.append((name.strip(), round(float(memory) / 1024, 1)))
        except ValueError:
            continue
    return gpus


def hardware() -> HardwareList:
    now = datetime.now(UTC)
    items = [Hardware(
        id="cpu", pricing=HardwarePricing(cents_per_minute=0),
        specs=HardwareSpecs(gpu_type="cpu", gpu_link="none", gpu_memory=0, gpu_count=0),
        availability=HardwareAvailability(status="available"), updated_at=now,
    )]
    gpus = _gpus()
    if gpus:
        name, memory = gpus[0]
        slug = name.lower().replace("nvidia ", "").replace(" ", "-")
        for count in sorted({1, len(gpus)}):
            items.append(Hardware(
                id=f"{count}x_nvidia_{slug}_{int(memory)}gb", pricing=HardwarePricing(cents_per_minute=0),
                specs=HardwareSpecs(gpu_type=name, gpu_link="pcie", gpu_memory=memory, gpu_count=count),
                availability=HardwareAvailability(status="available"), updated_at=now,
            ))
    return HardwareList(data=items)


# ----- endpoints -------------------------------------------------------------------------------


def to_wire(row: tables.Endpoint, supervisor: Supervisor | None) -> Endpoint:
    pool = supervisor.pools.get(row.id) if supervisor else None
    live = pool.live if pool else 0
    degraded = bool(pool and row.desired_state == "STARTED" and row.state in ("STARTED", "STARTING")
                    and pool.degraded)
    state = row.state
    if state == "STARTED" and degraded and live == 0:
        state = "STARTING"  # never STARTED with nothing to serve (the supervisor writes it soon too)
    return Endpoint(
        id=row.id, name=row.name, display_name=row.display_name, model=row.model, type=row.type,
        owner=row.workspace, hardware=row.hardware,
        autoscaling=Autoscaling(min_replicas=row.min_replicas, max_replicas=row.max_replicas),
        state=state, created_at=row.created_at.replace(tzinfo=UTC), inactive_timeout=row.inactive_timeout,
        enable_lora=row.enable_lora, max_loras=row.max_loras, max_lora_rank=row.max_lora_rank, engine=row.engine,
        visibility=row.visibility, error=row.error,
        replicas=live, degraded=degraded, placement=row.placement, urls=row.urls, resources=row.resources,
    )


def _owned(session: Session, workspace: str, endpoint_id: str) -> tables.Endpoint:
    row = store.find(session, endpoint_id)
    if row is None or row.workspace != workspace:
        raise ApiError(404, NO_ENDPOINT, code="endpoint_not_found")
    return row


def check_engine(settings: Settings, request: CreateEndpointRequest) -> None:
    """Refuse an endpoint whose engine fields do not fit together, or whose engine cannot run on this
    server, before anything is stored (it would only fail its starts and end in ERROR): 422. May run
    a short subprocess: call it outside any database session."""
    engine = request.engine
    if (problem := request.engine_problem()) is not None:
        raise ApiError(422, problem, code="invalid_engine")
    kind = ENGINES.get(engine)
    problem = kind.problem(settings) if kind is not None else None
    if problem:
        raise ApiError(422, f"engine '{engine}' is not available on this server: {problem}",
                       code="engine_unavailable")


def create(
    session: Session, settings: Settings, workspace: str, request: CreateEndpointRequest, access: Access,
    available: set[str],
) -> tables.Endpoint:
    """``available``: the hardware ids of this host (:func:`hardware`, probed before the transaction:
    ``nvidia-smi`` is never run while a database write is open)."""
    if session.get(tables.Workspace, workspace) is None:
        raise ApiError(404, f"Workspace '{workspace}' not found", code="workspace_not_found")
    reference = request.model if "/" in request.model else f"{workspace}/{request.model}"
    model_ws, _, model_name = reference.partition("/")
    model = model_store.find(session, model_ws, model_name)
    if model is None or not access.can(model_ws):  # a workspace the caller cannot read hides its models
        raise ApiError(404, f"Model '{reference}' not found", code="model_not_found")
    if request.engine != REMOTE:  # remote servers hold their own copy of the base model
        if not model.fileset:
            raise ApiError(400, f"model '{reference}' has no fileset: an endpoint needs the checkpoint's files",
                           code="model_without_files")
        fileset = fileset_store.find(session, *model.fileset.split("/", 1))
        if fileset is None or fileset_store.file(session, fileset.id, "config.json") is None:
            raise ApiError(400, f"fileset '{model.fileset}' of model '{reference}' has no config.json",
                           code="model_without_files")
    if request.hardware not in available:
        raise ApiError(400, f"hardware '{request.hardware}' is not available here; choose one of "
                            f"{sorted(available)} (GET /v1/hardware)", code="invalid_hardware")
    now = utcnow()
    name = f"{workspace}/{model.name}-{uuid.uuid4().hex[:8]}"
    row = tables.Endpoint(
        id=f"endpoint-{uuid.uuid4()}", name=name, display_name=request.display_name or name, workspace=workspace,
        model_id=model.id, model=reference, hardware=request.hardware,
        min_replicas=request.autoscaling.min_replicas, max_replicas=request.autoscaling.max_replicas,
        desired_state=request.state, state="PENDING" if request.state == "STARTED" else "STOPPED",
        inactive_timeout=request.inactive_timeout or None, enable_lora=request.enable_lora,
        max_loras=request.max_loras, max_lora_rank=request.max_lora_rank, engine=request.engine,
        visibility=request.visibility, type=request.type, processes=[], created_at=now, updated_at=now,
        placement=request.placement, urls=[str(u).rstrip("/") for u in request.urls] if request.urls else None,
        resources=dict(request.resources) if request.resources else None,
    )
    store.add(session, row)
    providers.sync_endpoint(session, row)  # the provider of its base model and adapters
    return row


def list_(session: Session, workspace: str, *, mine: bool | None, type_: str | None) -> list[tables.Endpoint]:
    if session.get(tables.Workspace, workspace) is None:  # as the registry answers for it
        raise ApiError(404, f"Workspace '{workspace}' not found", code="workspace_not_found")
    rows = store.list_(session, type_=type_)
    return [r for r in rows if r.workspace == workspace or (not mine and r.visibility == "public")]


def get(session: Session, workspace: str, endpoint_id: str) -> tables.Endpoint:
    return _owned(session, workspace, endpoint_id)


def update(session: Session, workspace: str, endpoint_id: str, request: UpdateEndpointRequest) -> tables.Endpoint:
    row = _owned(session, workspace, endpoint_id)
    if request.display_name is not None:
        row.display_name = request.display_name
    if request.autoscaling is not None:
        row.min_replicas = request.autoscaling.min_replicas
        row.max_replicas = request.autoscaling.max_replicas
    if "inactive_timeout" in request.model_fields_set:
        row.inactive_timeout = request.inactive_timeout or None
    if request.state is not None:
        row.desired_state = request.state
        if request.state == "STARTED" and row.state in ("STOPPED", "STOPPING", "ERROR"):
            row.state, row.error = "PENDING", None
    row.updated_at = utcnow()
    session.flush()
    providers.sync_endpoint(session, row)
    return row


def delete(session: Session, workspace: str, endpoint_id: str) -> None:
    row = _owned(session, workspace, endpoint_id)
    providers.drop_endpoint(session, row.id)
    store.delete(session, row)


def wire_list(rows: list[tables.Endpoint], supervisor: Supervisor) -> EndpointList:
    return EndpointList(data=[to_wire(r, supervisor) for r in rows])


# ----- adapters on endpoints --------------------------------------------------------------------


def _split(model_id: str) -> tuple[str, str]:
    parts = model_id.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ApiError(400, BAD_FORMAT, code="invalid_model_id")
    return parts[0], parts[1]


def _target(session: Session, workspace: str, endpoint_id: str, model_id: str) -> tuple[tables.Endpoint, tables.Adapter]:
    endpoint_name, adapter_name = _split(model_id)
    endpoint = _owned(session, workspace, endpoint_id)
    if endpoint_name != endpoint.name:
        raise ApiError(400, NAME_MISMATCH, code="endpoint_name_mismatch")
    adapter = session.query(tables.Adapter).filter_by(workspace=workspace, name=adapter_name).one_or_none()
    if adapter is None:
        raise ApiError(404, NO_MODEL, code="model_not_found")
    return endpoint, adapter


def _check_attach(session: Session, workspace: str, endpoint_id: str, model_id: str) -> tuple[tables.Endpoint, tables.Adapter]:
    endpoint, adapter = _target(session, workspace, endpoint_id, model_id)
    if endpoint.type != "dedicated":
        raise ApiError(400, NOT_DEDICATED, code="endpoint_not_dedicated")
    if endpoint.visibility == "public":
        raise ApiError(400, PUBLIC, code="endpoint_public")
    if not endpoint.enable_lora:
        raise ApiError(400, NO_LORA, code="lora_not_enabled")
    if adapter.model_id != endpoint.model_id:
        raise ApiError(400, INCOMPATIBLE, code="incompatible_base_model")
    binding = store.binding(session, adapter.id)
    if binding is not None and binding.endpoint_id != endpoint.id:
        raise ApiError(409, BOUND_ELSEWHERE, code="adapter_bound_elsewhere")
    if not adapter.enabled:
        raise ApiError(400, f"adapter '{adapter.name}' is disabled; enable it before attaching it",
                       code="adapter_disabled")
    return endpoint, adapter


async def attach(db: Database, supervisor: Supervisor, workspace: str, endpoint_id: str, model_id: str) -> str:
    """Check every rule, copy and load the adapter into every live replica (whichever server process
    owns the endpoint), then record the binding.

    A load that fails on any replica is undone on the others and nothing is recorded.
    """
    def check(session: Session) -> tuple[tables.Endpoint, tables.Adapter, AdapterWant]:
        endpoint, adapter = _check_attach(session, workspace, endpoint_id, model_id)
        return endpoint, adapter, adapter_wants(session, [adapter])[0]

    def record(session: Session) -> None:
        endpoint_now, adapter_now = _check_attach(session, workspace, endpoint_id, model_id)
        if store.binding(session, adapter_now.id) is None:
            session.add(tables.EndpointAdapter(
                adapter_id=adapter_now.id, endpoint_id=endpoint_now.id, workspace=adapter_now.workspace,
                adapter_name=adapter_now.name, created_at=utcnow(),
            ))
            session.flush()
            providers.sync_endpoint(session, endpoint_now)

    endpoint, adapter, want = await in_db(db, check)
    pool = supervisor.pool(endpoint.id)
    async with pool.lock:
        await supervisor.refresh(pool)
        pool.max_lora_rank = endpoint.max_lora_rank
        try:
            path = await anyio.to_thread.run_sync(supervisor.local_copy, want)
            read_adapter_config(adapter.name, path, max_rank=endpoint.max_lora_rank)
            await pool.attach(want, path, lambda: in_db(db, record, write=True))
        except (AdapterError, EngineError, FilesetMissing, OSError) as exc:
            reason = exc.message if isinstance(exc, EngineError) else str(exc)
            raise ApiError(400, f"adapter '{adapter.name}' could not be loaded: {reason}",
                           code="adapter_load_failed") from None
    supervisor.changed()
    return f"{endpoint.name}:{adapter.name}"


async def detach(db: Database, supervisor: Supervisor, workspace: str, endpoint_id: str, model_id: str) -> AdapterRemoved:
    def remove(session: Session) -> tuple[tables.Endpoint, tables.Adapter]:
        endpoint, adapter = _target(session, workspace, endpoint_id, model_id)
        binding = store.binding(session, adapter.id)
        if binding is None or binding.endpoint_id != endpoint.id:
            raise ApiError(409, NOT_BOUND, code="adapter_not_bound")
        session.delete(binding)
        session.flush()
        providers.sync_endpoint(session, endpoint)
        return endpoint, adapter

    endpoint, adapter = await in_db(db, lambda s: _target(s, workspace, endpoint_id, model_id))
    pool = supervisor.pool(endpoint.id)
    async with pool.lock:
        await supervisor.refresh(pool)
        await in_db(db, remove, write=True)
        supervisor.changed()
        await pool.detach(adapter.name)
    return AdapterRemoved(model_id=model_id)


def attached(session: Session, workspace: str, endpoint_id: str) -> AttachedAdapterList:
    endpoint = _owned(session, workspace, endpoint_id)
    return AttachedAdapterList(data=[
        AttachedAdapter(model_id=f"{endpoint.name}:{b.adapter_name}", adapter_name=b.adapter_name,
                        endpoint_name=endpoint.name)
        for b in store.bindings(session, endpoint.id)
    ])


# ----- replica logs -----------------------------------------------------------------------------

_LOG_FILE = re.compile(r"replica-(\d+)\.log")
_BLOCK = 64 * 1024


@dataclass(frozen=True)
class ReplicaLog:
    """Lines of one replica's engine log (``replica`` is None when the endpoint has no log yet)."""

    replica: int | None
    text: str
    offset: int
    """Byte position just after the last complete line read: the ``offset`` of the next read."""
    replicas: list[int]
    """Every replica of the endpoint that has a log, in order."""


def log_folder(settings: Settings, endpoint_id: str) -> Path:
    """Where the supervisor writes ``replica-<n>.log`` for the endpoint's engine processes."""
    return settings.home / "logs" / "endpoints" / endpoint_id


def replica_logs(settings: Settings, supervisor: Supervisor, endpoint_id: str, *, tail: int,
                 replica: int | None = None, offset: int | None = None) -> ReplicaLog:
    """The last ``tail`` complete lines of a replica's log, after byte ``offset`` when given.

    Without ``replica``: the newest replica running now, else the log written last (a replica that is
    starting, or the last one before the endpoint stopped or failed).
    """
    folder = log_folder(settings, endpoint_id)
    files: dict[int, Path] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            if match := _LOG_FILE.fullmatch(path.name):
                files[int(match.group(1))] = path
    if replica is None:
        pool = supervisor.pools.get(endpoint_id)
        live = [Path(p).name for p in pool.stats()["logs"]] if pool else []
        running = [int(m.group(1)) for name in live if (m := _LOG_FILE.fullmatch(name))]
        running = [n for n in running if n in files]
        if running:
            replica = max(running)
        elif files:
            replica = max(files, key=lambda n: (_mtime(files[n]), n))
        else:
            return ReplicaLog(replica=None, text="", offset=0, replicas=[])
    elif replica not in files:
        raise ApiError(404, f"endpoint has no log for replica {replica}", code="log_not_found")
    try:
        text, end = _tail(files[replica], tail, offset)
    except FileNotFoundError:
        raise ApiError(404, f"endpoint has no log for replica {replica}", code="log_not_found") from None
    return ReplicaLog(replica=replica, text=text, offset=end, replicas=sorted(files))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _tail(path: Path, lines: int, offset: int | None) -> tuple[str, int]:
    """The last ``lines`` complete lines after byte ``offset`` (from the start when the file is shorter
    than ``offset``: a new file under the same name), and the position after the last complete line.
    Reads backwards in blocks, so a long log costs what the answer needs."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = offset if offset is not None and offset <= size else 0
        position, data = size, b""
        while position > start and data.count(b"\n") <= lines:
            step = min(_BLOCK, position - start)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    kept = data[:end].split(b"\n")[:-1][-lines:] if lines else []
    return b"".join(line + b"\n" for line in kept).decode("utf-8", "replace"), position + end
