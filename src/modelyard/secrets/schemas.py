"""Secret wire models (the reference's ``PlatformSecret*`` shapes).

A value travels in as :class:`~pydantic.SecretStr` (``format: password``, write-only, hidden in any
``repr``) and comes out only in :class:`SecretAccess`. Its length is checked by the service, not
here: a schema constraint would repeat the rejected value in the 422 body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, SecretStr

from modelyard.workspaces.schemas import EntityName, RequestModel, WireModel

Description = Annotated[str, Field(max_length=1000)]


class CreateSecretRequest(RequestModel):
    name: EntityName
    description: Description | None = None
    value: SecretStr = Field(description="The payload of the secret: 1 byte to 64 KiB (UTF-8); never returned "
                                         "except by the /access route")


class UpdateSecretRequest(RequestModel):
    """Fields left out keep their value; ``description: null`` clears it; ``value: null`` keeps it."""

    description: Description | None = None
    value: SecretStr | None = Field(default=None, description="The new value (1 byte to 64 KiB)")


class SecretEntity(WireModel):
    name: str
    workspace: str
    description: str | None = None
    created_at: datetime
    updated_at: datetime


class SecretAccess(WireModel):
    name: str
    workspace: str
    value: str


class RotationResult(WireModel):
    rotated_secrets: int
    success: bool
