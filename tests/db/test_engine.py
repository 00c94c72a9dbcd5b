"""Migrations create the schema (never create_all) and are safe to run again."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from modelyard.db.engine import MIGRATIONS_DIR, Database


def test_migrate_is_idempotent_and_seeds_workspaces(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    db.migrate()
    with db.engine.connect() as conn:
        names = set(conn.execute(sa.text("SELECT name FROM workspaces")).scalars())
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert {"default", "system"} <= names
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert version == ScriptDirectory.from_config(config).get_current_head()  # the newest migration
    db.dispose()


def test_fresh_sqlite_file_is_created_under_home(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'modelyard.db'}"
    db = Database(url)
    db.migrate()
    assert (tmp_path / "nested" / "modelyard.db").exists()
    assert db.ping() and db.backend == "sqlite"
    db.dispose()


def test_failed_write_leaves_nothing(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    try:
        with db.session(write=True) as session:
            session.execute(sa.text(
                "INSERT INTO workspaces (name, created_at, updated_at) VALUES ('half-done', '2024-01-01', '2024-01-01')"
            ))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM workspaces WHERE name='half-done'")).scalar_one() == 0
    db.dispose()


def test_migration_0006_gives_every_existing_workspace_an_id(tmp_path) -> None:
    """A registry from before 0006 (built-in workspaces and one of its own) gets distinct ``workspace-``
    ids for all of them, and filesets a ``project`` column."""
    from alembic import command

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
        connection.execute(sa.text(
            "INSERT INTO workspaces (name, created_at, updated_at) VALUES ('older', '2024-01-01', '2024-01-01')"))
    db.migrate()
    with db.engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT name, id FROM workspaces")).all())
        assert set(rows) == {"default", "system", "older"}
        assert all(i and i.startswith("workspace-") for i in rows.values()) and len(set(rows.values())) == 3
        assert conn.execute(sa.text("SELECT count(project) FROM filesets")).scalar_one() == 0
    db.dispose()
