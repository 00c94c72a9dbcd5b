"""The CLI's auth commands: login, whoami, keys, members, secrets, and every other command picking the key
up from MODELYARD_HOME/credentials.

The first tests answer from an in-memory fake (httpx.MockTransport) and check what only the CLI decides:
a secret's value or a typed key is never echoed, a token is shown once with its warning, a 401 says how
to log in. The rest drive a live server with auth on, which writes its first PlatformAdmin key into the
credentials file the CLI then reads.
"""

from __future__ import annotations

import importlib.util
import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from modelyard.cli import main as cli
from modelyard.cli.main import app
from modelyard.client import Modelyard
from modelyard.client.credentials import load_api_key
from modelyard.config import Settings

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
SERVER_AUTH = importlib.util.find_spec("modelyard.auth.middleware") is not None


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_API_KEY", raising=False)
    monkeypatch.delenv("MODELYARD_URL", raising=False)


# ---- against a fake server ------------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[httpx.Request]]:
    """Every client the CLI builds talks to a fake: ``whoami`` knows the key ``good``, secrets echo back.
    MODELYARD_HOME is an empty folder."""
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "cli-home"))
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if request.headers.get("authorization") != "Bearer good":
            return httpx.Response(401, json={"detail": "Not authenticated: the key is invalid"})
        if path == "/apis/auth/authenticate":
            return httpx.Response(200, json={"principal": "alice", "groups": [], "scopes": ["models:read"],
                                             "token_kind": "access_key", "jti": "j1"})
        if path == "/apis/auth/v2/access-keys" and request.method == "POST":
            return httpx.Response(200, json={"jti": "j2", "name": "ci", "principal": "alice", "status": "active",
                                             "token": "tok-shown-once", "token_type": "Bearer"})
        if path.endswith("/secrets") and request.method == "POST":
            body = json.loads(request.content)
            return httpx.Response(201, json={"name": body["name"], "workspace": "ws",
                                             "description": body.get("description")})
        return httpx.Response(404, json={"detail": "no such route in the fake"})

    real = Modelyard

    def factory(*args: Any, **kwargs: Any) -> Modelyard:
        return real(*args, http_client=httpx.Client(transport=httpx.MockTransport(handle)), **kwargs)

    monkeypatch.setattr(cli, "Modelyard", factory)
    yield seen


def test_login_asks_for_the_key_hidden_checks_it_and_saves_it(fake: list[httpx.Request], tmp_path: Path) -> None:
    result = runner.invoke(app, ["login", "--url", "http://models.example:8000/"], input="good\n")
    assert result.exit_code == 0, result.output
    assert "good" not in result.output  # the prompt does not echo what is typed
    assert "logged in to http://models.example:8000 as alice" in result.output
    path = tmp_path / "cli-home" / "credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["servers"] == {"http://models.example:8000": {"api_key": "good",
                                                                                      "principal": "alice"}}
    assert fake[-1].headers["authorization"] == "Bearer good"


def test_login_with_a_bad_key_saves_nothing(fake: list[httpx.Request], tmp_path: Path) -> None:
    result = runner.invoke(app, ["login", "--url", "http://models.example", "--api-key", "bad"])
    assert result.exit_code == 1
    assert "401" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "cli-home" / "credentials").exists()


def test_other_commands_send_the_saved_key_and_a_401_says_how_to_log_in(fake: list[httpx.Request]) -> None:
    refused = runner.invoke(app, ["whoami", "--url", "http://models.example"])
    assert refused.exit_code == 1 and "modelyard login" in refused.output
    assert "authorization" not in fake[-1].headers
    assert runner.invoke(app, ["login", "--url", "http://models.example", "--api-key", "good"]).exit_code == 0
    shown = runner.invoke(app, ["whoami", "--url", "http://models.example"])
    assert shown.exit_code == 0 and "alice" in shown.output and "models:read" in shown.output
    assert fake[-1].headers["authorization"] == "Bearer good"


def test_keys_create_prints_the_token_once_with_a_warning(fake: list[httpx.Request],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_API_KEY", "good")
    result = runner.invoke(app, ["keys", "create", "--name", "ci", "--scope", "models:read", "--scope",
                                 "files:write", "--expires-in", "3600", "--url", "http://x"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.output.count("tok-shown-once") == 1 and "will not be shown again" in result.output
    assert json.loads(fake[-1].content) == {"name": "ci", "scopes": ["models:read", "files:write"],
                                            "expires_in_seconds": 3600}


@pytest.mark.parametrize("how", ["prompt", "file", "stdin"])
def test_secrets_create_never_echoes_the_value(fake: list[httpx.Request], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path, how: str) -> None:
    monkeypatch.setenv("MODELYARD_API_KEY", "good")
    (tmp_path / "value.txt").write_text("s3cret-value\n")
    args = {"prompt": [], "file": ["--from-file", str(tmp_path / "value.txt")], "stdin": ["--from-file", "-"]}[how]
    stdin = "s3cret-value\n"
    result = runner.invoke(app, ["secrets", "create", "ws", "tok", *args, "--url", "http://x"], input=stdin)
    assert result.exit_code == 0, result.output
    assert "s3cret-value" not in result.output and "tok" in result.output
    sent = json.loads(fake[-1].content)["value"]
    assert sent == ("s3cret-value" if how == "prompt" else "s3cret-value\n")  # files are sent as they are


def test_secrets_create_refuses_two_sources(fake: list[httpx.Request]) -> None:
    result = runner.invoke(app, ["secrets", "create", "ws", "tok", "--value", "a", "--from-file", "-"])
    assert result.exit_code != 0 and not fake


def test_a_broken_credentials_file_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "cli-home"))
    (tmp_path / "cli-home").mkdir()
    (tmp_path / "cli-home" / "credentials").write_text("{oops")
    result = runner.invoke(app, ["models", "list", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "not valid JSON" in result.output


# ---- against a live server with auth on ----------------------------------------------------------

live = pytest.mark.skipif(not SERVER_AUTH, reason="the server's auth (modelyard.auth.middleware) is not there yet")


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The shared settings with auth on; the CLI reads the credentials file the server writes there."""
    monkeypatch.setenv("MODELYARD_HOME", str(settings.home))
    return settings.model_copy(update={"auth": "on"})


@pytest.fixture
def server(live_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The live server's URL, with no MODELYARD_API_KEY: the CLI has only the credentials file to go by."""
    monkeypatch.delenv("MODELYARD_API_KEY", raising=False)
    return live_server


def _cli(url: str) -> Callable[..., Any]:
    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
        return runner.invoke(app, [*args, "--url", url], input=input, env={**WIDE, **(env or {})})

    return invoke


@live
def test_the_server_key_is_picked_up_by_every_command(server: str, settings: Settings,
                                                      tmp_path: Path) -> None:
    cli_ = _cli(server)
    assert load_api_key(server, home=settings.home)  # the server wrote its first admin key
    listed = cli_("workspaces", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert "default" in [w["name"] for w in json.loads(listed.output)]
    who = cli_("whoami", "--json")
    assert who.exit_code == 0, who.output
    assert json.loads(who.output)["principal"] == "admin"
    elsewhere = cli_("workspaces", "list", env={"MODELYARD_HOME": str(tmp_path / "empty")})
    assert elsewhere.exit_code == 1 and "401" in elsewhere.output and "modelyard login" in elsewhere.output


@live
def test_keys_create_login_suspend_unsuspend_revoke(server: str, settings: Settings, tmp_path: Path) -> None:
    cli_ = _cli(server)
    created = cli_("keys", "create", "--name", "ci", "--json")
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    token, jti = key["token"], key["jti"]
    shown = cli_("keys", "create", "--name", "other")
    assert shown.exit_code == 0 and "will not be shown again" in shown.output

    listed = cli_("keys", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {k["jti"]: k for k in json.loads(listed.output)}
    assert rows[jti]["name"] == "ci" and "token" not in rows[jti]

    other_home = {"MODELYARD_HOME": str(tmp_path / "laptop")}
    login = cli_("login", input=token + "\n", env=other_home)
    assert login.exit_code == 0, login.output
    assert token not in login.output and "admin" in login.output
    assert load_api_key(server, home=tmp_path / "laptop") == token
    assert cli_("whoami", env=other_home).exit_code == 0

    suspended = cli_("keys", "suspend", jti)
    assert suspended.exit_code == 0 and "SUSPENDED" in suspended.output, suspended.output
    refused = cli_("whoami", env=other_home)
    assert refused.exit_code == 1 and "401" in refused.output
    assert cli_("keys", "unsuspend", jti).exit_code == 0
    assert cli_("whoami", env=other_home).exit_code == 0

    revoked = cli_("keys", "revoke", jti)
    assert revoked.exit_code == 0 and "revoked" in revoked.output, revoked.output
    assert cli_("whoami", env=other_home).exit_code == 1


@live
def test_members_add_list_set_remove(server: str) -> None:
    cli_ = _cli(server)
    assert cli_("workspaces", "create", "team").exit_code == 0
    added = cli_("members", "add", "team", "bob@example.com", "--role", "Viewer")
    assert added.exit_code == 0, added.output
    listed = json.loads(cli_("members", "list", "team", "--json").output)
    assert {"principal": "bob@example.com", "roles": ["Viewer"]}.items() <= next(
        m for m in listed if m["principal"] == "bob@example.com").items()
    changed = cli_("members", "set", "team", "bob@example.com", "--role", "Editor", "--json")
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.output)[0]["roles"] == ["Editor"]
    assert cli_("members", "set", "team", "bob@example.com").exit_code != 0  # no --role: nothing to set
    removed = cli_("members", "remove", "team", "bob@example.com")
    assert removed.exit_code == 0, removed.output
    listed = json.loads(cli_("members", "list", "team", "--json").output)
    assert "bob@example.com" not in [m["principal"] for m in listed]


@live
def test_secrets_create_list_show_get_delete(server: str) -> None:
    cli_ = _cli(server)
    created = cli_("secrets", "create", "default", "hf-token", "--description", "for downloads",
                   input="hf_s3cret\n")
    assert created.exit_code == 0, created.output
    assert "hf_s3cret" not in created.output
    listed = cli_("secrets", "list", "default", "--json")
    assert listed.exit_code == 0 and "hf_s3cret" not in listed.output
    assert [s["name"] for s in json.loads(listed.output)] == ["hf-token"]
    shown = cli_("secrets", "show", "default", "hf-token", "--json")
    assert json.loads(shown.output)["description"] == "for downloads" and "hf_s3cret" not in shown.output
    got = cli_("secrets", "get", "default", "hf-token")
    assert got.exit_code == 0 and got.output == "hf_s3cret\n"
    updated = cli_("secrets", "update", "default", "hf-token", input="hf_rotated\n")
    assert updated.exit_code == 0 and "hf_rotated" not in updated.output, updated.output
    assert cli_("secrets", "get", "default", "hf-token").output == "hf_rotated\n"
    described = cli_("secrets", "update", "default", "hf-token", "--description", "", "--json")
    assert described.exit_code == 0 and "description" not in json.loads(described.output), described.output
    assert cli_("secrets", "get", "default", "hf-token").output == "hf_rotated\n"  # the value is kept
    assert cli_("secrets", "delete", "default", "hf-token").exit_code == 0
    gone = cli_("secrets", "get", "default", "hf-token")
    assert gone.exit_code == 1 and "404" in gone.output
