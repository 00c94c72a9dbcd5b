"""Settings, read from the environment with the prefix ``MODELYARD_``.

Everything has a default that works on a laptop with no set-up: data under ``~/.modelyard``
and a SQLite database there. Pointing ``MODELYARD_DATABASE_URL`` at PostgreSQL is the only
change needed to scale the registry out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".modelyard")
    """Where Modelyard keeps its data (the SQLite database, later the filesets)."""

    database_url: str | None = None
    """SQLAlchemy URL. Unset means SQLite at ``{home}/modelyard.db``; PostgreSQL needs
    a ``postgresql+psycopg://`` URL."""

    trusted_fileset_workspaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Workspaces whose filesets may be loaded with ``trust_remote_code=true``
    (comma-separated in the environment)."""

    engine_start_timeout: float = 300.0
    """Seconds an engine replica may take to answer /health (vLLM needs about a minute on a CPU)."""

    engine_max_failures: int = 3
    """Consecutive replica failures (failed starts or crashes) before an endpoint goes to ERROR."""

    replica_target_in_flight: int = 4
    """Requests in flight per replica above which an endpoint scales out (up to max_replicas)."""

    scale_down_after: float = 60.0
    """Seconds an endpoint must be idle before an extra replica is stopped."""

    supervisor_interval: float = 2.0
    """Seconds between the supervisor's passes over the endpoints (it also wakes on every change)."""

    provider_poll_interval: float = 30.0
    """Seconds between asks of every model provider's ``/v1/models`` (for ``served_models`` and ``status``;
    also at once when a provider is created or replaced)."""

    supervisor_max_backoff: float = 30.0
    """Longest pause, in seconds, between supervisor passes while they fail (a database outage)."""

    vllm_python: str | None = None
    """Interpreter with vLLM installed, for endpoints with ``engine: vllm`` (default: see engine/vllm.py)."""

    ray_address: str | None = None
    """A Ray cluster (``ray://host:10001`` or ``host:6379``, as ``ray.init`` takes it): endpoints without a
    ``placement`` run their replicas on its nodes. Unset: replicas run on this machine."""

    ray_namespace: str = "modelyard"
    """Ray namespace of the replicas' named actors (servers of one deployment must share it)."""

    lease_seconds: float = 10.0
    """How long a server process owns an endpoint without renewing its lease (renewed on every supervisor
    pass, so keep it several times ``supervisor_interval``); a process that stops renewing loses its
    endpoints to the others, which adopt their replicas."""

    routing: Literal["adapter_affinity", "least_loaded"] = "adapter_affinity"
    """How the gateway picks a replica: ``adapter_affinity`` sends each adapter to its home replica (the
    same one in every server process, adapters spread evenly) unless that one is busier than the least
    loaded by ``replica_target_in_flight`` requests; ``least_loaded`` always takes the least loaded."""

    max_file_size: int = 50 * 1024**3
    """Largest file one upload may store, in bytes (413 above it)."""

    max_json_bytes: int = 4 * 1024**2
    """Largest JSON request body, in bytes (413 before it is parsed; file uploads have ``max_file_size``)."""

    max_replicas: int = 8
    """Most replicas an endpoint may ask for (``autoscaling.min_replicas``/``max_replicas``; 422 above)."""

    s3_access_key_id: str | None = None
    """Credentials for ``s3`` filesets; unset means the usual AWS environment / config chain."""

    s3_secret_access_key: str | None = None
    s3_endpoint_url: str | None = None
    """Default endpoint for ``s3`` filesets that name none (MinIO, moto, ...)."""

    s3_region: str | None = None
    s3_part_size: int = 8 * 1024**2
    """Multipart upload part size for ``s3`` filesets (S3 needs at least 5 MiB)."""

    blob_grace: float = 3600.0
    """Seconds before the sweeper removes an upload's temporary file or a blob no file row references
    (so an upload in progress or a download that just started is never collected)."""

    sweep_interval: float = 600.0
    """Seconds between the sweeper's passes over the blob areas (it also runs when the server starts)."""

    auth: Literal["on", "off"] = "on"
    """``off`` is the reference's local mode: no tokens, every caller may do everything (refused on a
    non-loopback bind unless ``allow_insecure``)."""

    allow_insecure: bool = False
    """Let a server with ``auth=off`` listen on an address other people can reach."""

    secret_key: str | None = None
    """Fernet keys (comma-separated, the first encrypts) for secrets and signing keys at rest; unset
    means a key generated into ``{home}/secret.key`` (mode 0600) on first start."""

    oidc_issuer: str | None = None
    """Also accept tokens from this OIDC issuer (its JWKS is fetched from its discovery document)."""

    oidc_audience: str | None = None
    """The ``aud`` an OIDC token must carry (required when ``oidc_issuer`` is set)."""

    oidc_principal_claim: str = "email"
    """The OIDC claim that names the principal."""

    auth_failures_per_minute: int = 30
    """Failed authentications one client address may make per minute before it gets 429."""

    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """``Host`` names the server answers besides loopback names and the address it binds to
    (comma-separated; ``*`` turns the DNS-rebinding check off)."""

    s3_allowed_endpoints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """S3 endpoint URLs a fileset's ``endpoint_url`` may name (comma-separated), besides ``s3_endpoint_url``
    (always allowed; a fileset naming no endpoint uses it); unset: only ``s3_endpoint_url``. Compared
    as normalised URLs (scheme, lowercase host, port with 80/443 filled in, no trailing slash); URLs
    with ``user@``, a query or another scheme than http(s) are refused. Anything else is 400 at create."""

    s3_allowed_buckets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """S3 buckets a fileset may name, on any allowed endpoint (comma-separated; ``*``: any bucket).
    Unset: any bucket on the configured endpoint (``s3_endpoint_url``, or AWS's own when that is unset),
    none on the other endpoints of ``s3_allowed_endpoints``. Set it to keep filesets off the other
    buckets the server's credentials can reach."""

    metrics: Literal["on", "off"] = "on"
    """``/metrics`` in Prometheus' text format (``off``: the route answers 404 and nothing is counted)."""

    metrics_require_key: bool = False
    """When true, ``/metrics`` needs an access key with the ``platform:read`` scope, like the admin routes;
    by default it is open to anyone who can reach the server, as Prometheus' scrapers expect."""

    usage: Literal["on", "off"] = "on"
    """Usage records: requests, errors, tokens and latency per model per minute, kept in the database."""

    usage_flush_interval: float = 5.0
    """Seconds between flushes of the in-memory usage aggregates to the database (and at a clean stop)."""

    console: Literal["on", "off"] = "on"
    """The web console at ``/console`` (``off``: its routes answer 404)."""

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator(
        "trusted_fileset_workspaces", "allowed_hosts", "s3_allowed_endpoints", "s3_allowed_buckets", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def check_bind(self, host: str) -> None:
        """Refuse to serve with auth off on an address other machines can reach, unless told to."""
        if self.auth == "on" or self.allow_insecure:
            return
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        if not loopback:
            raise ValueError(
                f"authentication is off (MODELYARD_AUTH=off) and the server would listen on {host}, where other "
                "machines can reach it: bind to 127.0.0.1, turn auth on, or set MODELYARD_ALLOW_INSECURE=1"
            )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'modelyard.db'}"
