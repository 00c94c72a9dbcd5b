"""Workspace wire models, and the name rules every entity shares.

The reference enforces one strict name rule for workspaces, models, adapters and filesets
(the seeds print a looser ``^[\\w\\-.]+$``, but a model named outside the strict rule could never
be referenced as ``ws/name``), so it lives here once.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from modelyard.errors import clip

NAME_PATTERN = r"^[a-z](?!.*--)[a-z0-9\-@.+_]{1,62}(?<!-)$"
_NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = ("2-63 characters: lowercase letters, digits and - @ . + _; must start with a letter; "
             "no '--' and no trailing '-'")


def check_name(value: str) -> str:
    """One entity name, matched whole (``$`` would also accept a trailing newline), with the rule in
    words rather than the raw pattern."""
    if not _NAME_RE.fullmatch(value):
        hint = " (uppercase letters are not allowed)" if any(c.isupper() for c in value) else ""
        raise ValueError(f"{clip(repr(value), 100)} is not a valid name{hint}: {NAME_RULE}")
    return value


EntityName = Annotated[
    str, Field(json_schema_extra={"pattern": NAME_PATTERN}, max_length=63), AfterValidator(check_name)
]


def check_reference(value: str) -> str:
    """``name`` or ``workspace/name``, each part a valid entity name."""
    parts = value.split("/")
    if len(parts) > 2:
        raise ValueError(f"'{clip(value, 100)}' must be 'name' or 'workspace/name' (at most one '/')")
    for part in parts:
        check_name(part)
    return value


Reference = Annotated[str, StringConstraints(max_length=255), AfterValidator(check_reference)]
ModelReference = Annotated[str, StringConstraints(max_length=127), AfterValidator(check_reference)]


class RequestModel(BaseModel):
    """Request bodies reject unknown fields (the reference silently drops them: a bug)."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re")


class WireModel(BaseModel):
    model_config = ConfigDict(regex_engine="python-re")


class CreateWorkspaceRequest(RequestModel):
    name: EntityName
    description: Annotated[str, Field(max_length=1000)] | None = None


class Workspace(WireModel):
    id: str = Field(description="workspace-<base58>")
    name: str
    description: str | None = None
    created_at: datetime
    created_by: str | None = None
    """The principal that created it: empty when auth is off, null for the built-in ones."""
    updated_at: datetime
    updated_by: str | None = None
