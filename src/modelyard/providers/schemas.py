"""Model provider wire models (the reference's ``ModelProvider`` shapes)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field

from modelyard.errors import clip
from modelyard.workspaces.schemas import EntityName, RequestModel, WireModel

Project = Annotated[str, Field(max_length=255, pattern=r"^[\w\-./]+$")]
Description = Annotated[str, Field(max_length=1000)]
HostUrl = Annotated[str, Field(max_length=2048, description="The provider's base URL, e.g. https://api.example.com "
                                                          "(the gateway appends /v1/... to it)")]
SecretName = Annotated[str, Field(max_length=255, description="A secret of the provider's workspace holding the "
                                                              "API key; read only when the gateway calls")]
AuthHeaderFormat = Annotated[str, Field(max_length=1024, description=(
    "Jinja2 template (rendered in a sandbox) of how the key is sent: 'Header-Name: value' or just the value of "
    "Authorization, with the key as {{ auth_secret }} (or {{ secret }}); default 'Authorization: Bearer "
    "{{ auth_secret }}'"))]


class ModelProviderStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    CREATED = "CREATED"
    PENDING = "PENDING"
    READY = "READY"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"
    LOST = "LOST"


class ServedModelMapping(RequestModel):
    """A model entity (``workspace/name``) and the name the provider knows it by."""

    model_entity_id: Annotated[str, Field(max_length=255)]
    served_model_name: Annotated[str, Field(max_length=255)]


def check_host_url(value: str) -> str:
    """An absolute http(s) URL with a host and no ``user:password@`` (credentials belong in a secret).
    Checked by the service, not the schema, so that a refusal never echoes credentials back."""
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if parts is not None and "@" in parts.netloc:
        raise ValueError("host_url must not carry credentials (user:password@); put the key in a secret and name it "
                         "in api_key_secret_name")
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(f"host_url must be an absolute http:// or https:// URL with a host, got {clip(repr(value), 100)}")
    if parts.fragment or any(c in value for c in "\r\n\t "):
        raise ValueError(f"host_url must be a plain URL (no fragment, no whitespace), got {clip(repr(value), 100)}")
    return value


class _ProviderFields(RequestModel):
    project: Project | None = None
    description: Description | None = None
    host_url: HostUrl
    api_key_secret_name: SecretName | None = None
    enabled_models: list[str] | None = None
    default_extra_body: dict[str, Any] | None = None
    default_extra_headers: dict[str, str] | None = None
    required_extra_body: dict[str, Any] | None = None
    required_extra_headers: dict[str, str] | None = None
    model_deployment_id: Annotated[str, Field(max_length=255)] | None = None
    status: ModelProviderStatus | None = None
    status_message: Annotated[str, Field(max_length=1000)] | None = None
    auth_header_format: AuthHeaderFormat | None = None


class CreateModelProviderRequest(_ProviderFields):
    name: EntityName


class UpsertModelProviderRequest(_ProviderFields):
    """Every field at once (PUT): what is left out is cleared. Status fields have their own route."""


class UpdateModelProviderStatusRequest(RequestModel):
    model_deployment_id: Annotated[str, Field(max_length=255)] | None = None
    served_models: list[ServedModelMapping] | None = None
    status: ModelProviderStatus | None = None
    status_message: Annotated[str, Field(max_length=1000)] | None = None


class AuthContext(WireModel):
    principal_id: str = ""
    principal_email: str | None = None
    principal_groups: list[str] = Field(default_factory=list)
    principal_on_behalf_of: str | None = None
    principal_on_behalf_of_groups: list[str] | None = None
    principal_on_behalf_of_email: str | None = None


class ModelProvider(WireModel):
    id: str
    name: str
    workspace: str
    project: str | None = None
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    host_url: str
    api_key_secret_name: str | None = None
    served_models: list[ServedModelMapping] | None = None
    enabled_models: list[str] | None = None
    status: ModelProviderStatus = ModelProviderStatus.UNKNOWN
    status_message: str = ""
    default_extra_body: dict[str, Any] | None = None
    default_extra_headers: dict[str, str] | None = None
    required_extra_body: dict[str, Any] | None = None
    required_extra_headers: dict[str, str] | None = None
    model_deployment_id: str | None = None
    auth_context: AuthContext | None = None
    auth_header_format: str | None = None
