"""Wire models of the files API (``/apis/files/v2/workspaces/{ws}/filesets``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

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


Project = Annotated[str, Field(max_length=255, pattern=r"^[\w\-./]*$")]


class CreateFilesetRequest(RequestModel):
    name: EntityName
    description: str | None = None
    project: Project | None = None
    purpose: Purpose = Purpose.GENERIC
    metadata: dict[str, Any] | None = None
    custom_fields: dict[str, Any] | None = None
    storage: Storage = Field(default_factory=LocalStorage)


class UpdateFilesetRequest(RequestModel):
    description: str | None = None
    project: Project | None = None
    purpose: Purpose = Field(  # type: ignore[assignment]  # left out: unchanged; null is not a purpose
        default=None, description="generic, dataset or model; leave it out to keep the current one"
    )
    metadata: dict[str, Any] | None = None
    custom_fields: dict[str, Any] | None = None


class FilesetMetadata(WireModel):
    """What the fileset holds, as the reference shapes it: these three keys always, and any other the
    client set."""

    model_config = ConfigDict(extra="allow", regex_engine="python-re")

    dataset: Any = None
    model: Any = None
    environment: Any = None


class Fileset(WireModel):
    id: str
    name: str
    workspace: str
    description: str = ""
    purpose: Purpose
    storage: LocalStorage | S3Storage
    metadata: FilesetMetadata = Field(default_factory=FilesetMetadata)
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    project: str = ""
    created_at: datetime
    updated_at: datetime


class FileEntry(WireModel):
    file_ref: str = Field(description="`ws/fileset#path`")
    file_url: str = Field(description="where to GET the file on this server")
    path: str
    size: int
    cache_status: str | None = Field(
        default=None, description="'not_cacheable' in listings (files are served from their storage); null "
        "in the answer to an upload or a delete, as the reference gives it")
    sha256: str


class FileList(WireModel):
    data: list[FileEntry]
