"""Wire models of the files API (``/apis/files/v2/workspaces/{ws}/filesets``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from modelyard.workspaces.schemas import EntityName, RequestModel, WireModel


class Purpose(StrEnum):
    GENERIC = "generic"
    DATASET = "dataset"
    MODEL = "model"


class LocalStorage(RequestModel):
    """Files under ``MODELYARD_HOME/filesets/<ws>/<name>`` on the server."""

    type: Literal["local"] = "local"


class S3Storage(RequestModel):
    """Files in an S3-compatible bucket under ``<prefix>/<ws>/<name>``. Credentials come from the
    server's settings or environment, never from here."""

    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field(default="", max_length=512)
    endpoint_url: str | None = Field(default=None, description="for S3-compatible servers (MinIO, moto...)")
    region: str | None = None


Storage = Annotated[LocalStorage | S3Storage, Field(discriminator="type")]


class CreateFilesetRequest(RequestModel):
    name: EntityName
    description: str | None = None
    purpose: Purpose = Purpose.GENERIC
    metadata: dict[str, Any] | None = None
    custom_fields: dict[str, Any] | None = None
    storage: Storage = Field(default_factory=LocalStorage)


class UpdateFilesetRequest(RequestModel):
    description: str | None = None
    purpose: Purpose = Field(  # type: ignore[assignment]  # left out: unchanged; null is not a purpose
        default=None, description="generic, dataset or model; leave it out to keep the current one"
    )
    metadata: dict[str, Any] | None = None
    custom_fields: dict[str, Any] | None = None


class Fileset(WireModel):
    id: str
    name: str
    workspace: str
    description: str | None = None
    purpose: Purpose
    metadata: dict[str, Any] | None = None
    custom_fields: dict[str, Any] | None = None
    storage: LocalStorage | S3Storage
    created_at: datetime
    updated_at: datetime


class FileEntry(WireModel):
    file_ref: str = Field(description="`ws/fileset#path`")
    file_url: str = Field(description="where to GET the file on this server")
    path: str
    size: int
    sha256: str


class FileList(WireModel):
    data: list[FileEntry]
