import re

import pytest

from modelyard.client import ConflictError, Modelyard, NotFoundError, UnprocessableEntityError
from tests.conftest import make_fileset


def test_new_database_has_default_and_system(client: Modelyard) -> None:
    names = [w.name for w in client.workspaces.list().data]
    assert {"default", "system"} <= set(names)


def test_workspaces_carry_id_and_who(client: Modelyard) -> None:
    """``id`` is ``workspace-<base58>`` (the built-in ones got theirs from migration 0006);
    ``created_by``/``updated_by`` are the creator's principal, null for the built-in ones."""
    raw = client.request("POST", "/apis/entities/v2/workspaces", json={"name": "ids-team"}).json()
    assert set(raw) == {"id", "name", "description", "created_at", "created_by", "updated_at", "updated_by"}
    assert re.fullmatch(r"workspace-[1-9A-HJ-NP-Za-km-z]{22}", raw["id"])
    assert raw["created_by"] and raw["created_by"] == raw["updated_by"] and raw["description"] is None
    assert client.workspaces.retrieve("ids-team").id == raw["id"]
    listed = client.request("GET", "/apis/entities/v2/workspaces").json()
    assert listed["sort"] == "-created_at" and listed["filter"] is None  # as the reference lists them
    assert listed["data"][0]["name"] == "ids-team"  # newest first
    built_in = {w["name"]: w for w in listed["data"] if w["name"] in ("default", "system")}
    assert all(w["id"].startswith("workspace-") and w["created_by"] is None for w in built_in.values())
    assert len({w["id"] for w in listed["data"]}) == len(listed["data"])


def test_create_get_delete(client: Modelyard) -> None:
    created = client.workspaces.create("research-team", description="NLP")
    assert created.name == "research-team" and created.description == "NLP"
    assert client.workspaces.retrieve("research-team").created_at == created.created_at
    client.workspaces.delete("research-team")
    with pytest.raises(NotFoundError) as err:
        client.workspaces.retrieve("research-team")
    assert err.value.detail == "Workspace 'research-team' not found"


@pytest.mark.parametrize(
    "name", ["A-team", "x", "a--b", "team-", "1team", "has space", "a" * 64, "a/b", "ab\n", "ab\r\n"]
)
def test_invalid_names_are_422(client: Modelyard, name: str) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        client.workspaces.create(name)
    assert err.value.detail[0]["loc"] == ["body", "name"]
    if len(name) <= 63:  # the rule in words, not the raw pattern
        assert "lowercase letters, digits and - @ . + _; must start with a letter" in err.value.detail[0]["msg"]


def test_uppercase_names_are_told_why(client: Modelyard) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        client.workspaces.create("MyTeam")
    assert "uppercase letters are not allowed" in err.value.detail[0]["msg"]


@pytest.mark.parametrize("name", ["ab", "team.a@b+c_d", "a" * 63, "a-b-c"])
def test_valid_names(client: Modelyard, name: str) -> None:
    assert client.workspaces.create(name).name == name


def test_duplicate_is_409(client: Modelyard) -> None:
    client.workspaces.create("dup-ws")
    with pytest.raises(ConflictError) as err:
        client.workspaces.create("dup-ws")
    assert "dup-ws" in err.value.detail


def test_delete_workspace_holding_models_is_409(client: Modelyard) -> None:
    client.workspaces.create("busy")
    client.models.create("busy", name="m1")
    with pytest.raises(ConflictError) as err:
        client.workspaces.delete("busy")
    assert "still holds" in err.value.detail
    client.models.delete("busy", "m1")
    client.workspaces.delete("busy")


def test_delete_workspace_holding_adapters_is_409(client: Modelyard) -> None:
    client.workspaces.create("base-ws")
    make_fileset(client, "adapter-ws/files")
    client.models.create("base-ws", name="base")
    client.adapters.create("adapter-ws", model="base-ws/base", name="ad", fileset="adapter-ws/files", finetuning_type="lora")
    with pytest.raises(ConflictError):
        client.workspaces.delete("adapter-ws")


def test_builtin_workspaces_cannot_be_deleted(client: Modelyard) -> None:
    with pytest.raises(ConflictError):
        client.workspaces.delete("default")


def test_delete_unknown_is_404(client: Modelyard) -> None:
    with pytest.raises(NotFoundError):
        client.workspaces.delete("ghost")


def test_list_filters_and_sort(client: Modelyard) -> None:
    for name in ("zeta", "alpha", "mid"):
        client.workspaces.create(name)
    page = client.workspaces.list(sort="-name", filters={"name": {"$in": ["zeta", "alpha", "mid"]}})
    assert [w.name for w in page.data] == ["zeta", "mid", "alpha"]
