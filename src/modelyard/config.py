"""Settings, read from the environment with the prefix ``MODELYARD_``.

Everything has a default that works on a laptop with no set-up: data under ``~/.modelyard``
and a SQLite database there. Pointing ``MODELYARD_DATABASE_URL`` at PostgreSQL is the only
change needed to scale the registry out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("trusted_fileset_workspaces", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'modelyard.db'}"
