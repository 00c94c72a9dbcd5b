"""Who may do what with secrets: the service's checks, called with hand-made Access objects."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from modelyard.auth.principal import Access, Principal
from modelyard.client import Modelyard
from modelyard.errors import Forbidden, NotFound
from modelyard.listing import parse_list_query
from modelyard.secrets import service, store

VIEWER = Access(Principal("bob"), ranks={"ws": 1})
EDITOR = Access(Principal("carol"), ranks={"ws": 2})
OUTSIDER = Access(Principal("eve"), ranks={"other": 3})


@pytest.fixture
def ws(client: Modelyard, app: FastAPI) -> FastAPI:
    client.workspaces.create("ws")
    with app.state.db.session(write=True) as session:
        service.create(session, app.state.keyring, EDITOR, "ws", name="token", description=None, value="v-1")
    return app


def _query():
    return parse_list_query({}, store.FILTERS, sort="name", page=1, page_size=10)


def test_viewer_reads_metadata_only(ws: FastAPI) -> None:
    keyring = ws.state.keyring
    with ws.state.db.session(write=True) as session:
        assert [s.name for s in service.list_(session, VIEWER, "ws", _query()).data] == ["token"]
        assert service.get(session, VIEWER, "ws", "token").name == "token"
        attempts = {
            "create": lambda: service.create(session, keyring, VIEWER, "ws", name="t2", description=None, value="v"),
            "update": lambda: service.update(session, keyring, VIEWER, "ws", "token", {"value": "v2"}),
            "delete": lambda: service.delete(session, VIEWER, "ws", "token"),
            "access": lambda: service.reveal(session, keyring, VIEWER, "ws", "token"),
        }
        for action, attempt in attempts.items():
            with pytest.raises(Forbidden) as err:
                attempt()
            assert "Editor" in err.value.message and "'bob' is Viewer" in err.value.message, action


def test_editor_does_everything_in_the_workspace(ws: FastAPI) -> None:
    keyring = ws.state.keyring
    with ws.state.db.session(write=True) as session:
        assert service.reveal(session, keyring, EDITOR, "ws", "token").value == "v-1"
        service.update(session, keyring, EDITOR, "ws", "token", {"value": "v-2", "description": "d"})
        assert service.reveal(session, keyring, EDITOR, "ws", "token").value == "v-2"
        service.delete(session, EDITOR, "ws", "token")


def test_a_workspace_the_caller_cannot_see_is_404(ws: FastAPI) -> None:
    with ws.state.db.session() as session:
        with pytest.raises(NotFound):
            service.get(session, OUTSIDER, "ws", "token")
        with pytest.raises(NotFound):
            service.list_(session, OUTSIDER, "ws", _query())


def test_rotation_needs_platform_admin(ws: FastAPI) -> None:
    installed = []
    key_file = ws.state.settings.home / "secret.key"
    before = key_file.read_bytes()
    with ws.state.db.session(write=True) as session:
        for access in (VIEWER, EDITOR, Access(Principal("root"), ranks={"ws": 3})):
            with pytest.raises(Forbidden) as err:
                service.rotate(session, access, lambda: ws.state.keyring, installed.append)
            assert "PlatformAdmin" in err.value.message
    assert installed == [] and key_file.read_bytes() == before  # no key added for a refused caller
    admin = Access(Principal("admin"), platform_admin=True)
    with ws.state.db.session(write=True) as session:
        result = service.rotate(session, admin, lambda: ws.state.keyring, installed.append)
    assert result.rotated_secrets == 1 and result.success and len(installed) == 1
