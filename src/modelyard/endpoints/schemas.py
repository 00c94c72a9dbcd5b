"""Wire models of the endpoints API: Together's dedicated-endpoint format plus our serving fields."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelyard.boundary import max_replicas_limit
from modelyard.engine.backends import ENGINE_NAMES, PLACEMENTS

State = Literal["PENDING", "STARTING", "STARTED", "STOPPING", "STOPPED", "ERROR"]


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(ge=0, le=64, description="replicas kept running while the endpoint is STARTED")
    max_replicas: int = Field(ge=1, le=64, description="most replicas under load")

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.max_replicas must be >= autoscaling.min_replicas")
        return self


def _within_host_limit(autoscaling: Autoscaling | None) -> Autoscaling | None:
    """Requests may not ask for more replicas than this server allows (``MODELYARD_MAX_REPLICAS``)."""
    limit = max_replicas_limit.get()
    if autoscaling is not None and max(autoscaling.min_replicas, autoscaling.max_replicas) > limit:
        raise ValueError(
            f"min_replicas and max_replicas must be at most {limit} on this server (MODELYARD_MAX_REPLICAS)"
        )
    return autoscaling


class CreateEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=127, description="base model, `ws/name` or `name`")
    hardware: str = Field(min_length=1, max_length=127, description="an id from GET /v1/hardware")
    autoscaling: Autoscaling
    display_name: str | None = Field(default=None, max_length=255)
    state: Literal["STARTED", "STOPPED"] = "STARTED"
    inactive_timeout: int | None = Field(default=None, ge=0, le=2**31 - 1)
    availability_zone: str | None = None
    disable_prompt_cache: bool | None = None
    disable_speculative_decoding: bool | None = None
    enable_lora: bool = True
    max_loras: int = Field(default=4, ge=1, le=128, description="adapters resident in each replica at once")
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    engine: str = Field(default="builtin", max_length=64, json_schema_extra={"enum": list(ENGINE_NAMES)},
                        description="the engine a replica runs: one we start (`builtin`, `vllm`) or `remote`: "
                                    "servers someone else runs, listed in `urls` (422 for an unknown one)")
    placement: str | None = Field(default=None, max_length=64, json_schema_extra={"enum": list(PLACEMENTS)},
                                  description="where engines we start run: `local` (this machine) or `ray` (a Ray "
                                              "cluster's nodes); default: `ray` when the server has "
                                              "MODELYARD_RAY_ADDRESS, else `local`")
    urls: list[str] | None = Field(default=None, max_length=64,
                                   description="engine `remote`: the OpenAI/vLLM servers to route to (one replica "
                                               "each; they must allow runtime LoRA updating)")
    resources: dict[str, float] | None = Field(default=None, description="placement `ray`: what each replica "
                                               "needs from a node, e.g. {\"CPU\": 2}, {\"GPU\": 1} or a custom "
                                               "resource")
    visibility: Literal["private", "public"] = "private"
    type: Literal["dedicated", "serverless"] = "dedicated"

    replicas_within_limit = field_validator("autoscaling")(_within_host_limit)

    def engine_problem(self) -> str | None:
        """Why the engine fields cannot work together (checked by the service: a 422, like an engine
        this server cannot run), or None."""
        if self.engine not in ENGINE_NAMES:
            return f"unknown engine '{self.engine}'; known: {', '.join(ENGINE_NAMES)}"
        if self.placement is not None and self.placement not in PLACEMENTS:
            return f"unknown placement '{self.placement}'; known: {', '.join(PLACEMENTS)}"
        if self.engine == "remote":
            if not self.urls:
                return "engine 'remote' needs `urls`: the servers to route to"
            if self.placement is not None or self.resources:
                return "engine 'remote' runs on servers someone else places: no `placement` or `resources`"
            for url in self.urls:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
                    return f"urls: {url!r} is not an http(s) URL with a host (and no user:password@)"
        elif self.urls:
            return f"`urls` are for engine 'remote'; engine '{self.engine}' is started by Modelyard"
        for name, amount in (self.resources or {}).items():
            if not name or len(name) > 64 or not 0 < amount <= 1_000_000:
                return "resources: each name must be 1-64 characters and each amount in (0, 1000000]"
        if self.resources and self.placement == "local":
            return "`resources` place replicas on a Ray cluster's nodes: use placement 'ray'"
        return None


class UpdateEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["STARTED", "STOPPED"] | None = None
    autoscaling: Autoscaling | None = None
    display_name: str | None = Field(default=None, max_length=255)
    inactive_timeout: int | None = Field(default=None, ge=0, le=2**31 - 1)

    replicas_within_limit = field_validator("autoscaling")(_within_host_limit)


class Endpoint(BaseModel):
    object: Literal["endpoint"] = "endpoint"
    id: str
    name: str
    display_name: str
    model: str
    type: Literal["dedicated", "serverless"]
    owner: str
    hardware: str
    autoscaling: Autoscaling
    state: State
    created_at: datetime
    inactive_timeout: int | None = None
    enable_lora: bool
    max_loras: int
    max_lora_rank: int
    engine: str
    placement: str | None = None
    urls: list[str] | None = None
    resources: dict[str, float] | None = None
    visibility: Literal["private", "public"]
    error: str | None = None
    replicas: int = Field(description="engine replicas running and healthy now")
    degraded: bool = Field(default=False, description="a replica died and is being replaced (the state "
                                                      "is STARTING while none is left alive)")


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Endpoint]


class AdapterModelId(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(description="`<endpoint_name>:<adapter_name>`")


class AttachedAdapter(BaseModel):
    model_id: str
    adapter_name: str
    endpoint_name: str


class AttachedAdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AttachedAdapter]


class AdapterRemoved(BaseModel):
    deleted: bool = True
    model_id: str


class HardwarePricing(BaseModel):
    cents_per_minute: float


class HardwareSpecs(BaseModel):
    gpu_type: str
    gpu_link: str
    gpu_memory: float
    gpu_count: int


class HardwareAvailability(BaseModel):
    status: Literal["available", "unavailable", "insufficient"]


class Hardware(BaseModel):
    object: Literal["hardware"] = "hardware"
    id: str
    pricing: HardwarePricing
    specs: HardwareSpecs
    availability: HardwareAvailability | None = None
    updated_at: datetime


class HardwareList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Hardware]
