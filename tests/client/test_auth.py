"""The SDK's side of auth: the credentials file (mode 0600, atomic replace, per-server lookup, entries
kept), where the client's key comes from (argument, MODELYARD_API_KEY, the file), the Bearer header on
every request, and the error classes of 401/403/429. No server: httpx.MockTransport answers."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import httpx
import pytest

from modelyard.client import (
    AuthenticationError,
    CredentialsError,
    Modelyard,
    PermissionDeniedError,
    RateLimitError,
)
from modelyard.client import credentials as creds


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test starts with no key in the environment and an empty MODELYARD_HOME of its own."""
    monkeypatch.delenv("MODELYARD_API_KEY", raising=False)
    monkeypatch.delenv("MODELYARD_URL", raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    return home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- the credentials file -------------------------------------------------------------------------


def test_save_default_writes_0600_json_and_keeps_servers(tmp_path: Path) -> None:
    home = tmp_path / "srv"
    creds.save_login("http://remote:9000", "remote-key", "alice", home=home)
    path = creds.save_default(home, "admin-key", "admin")
    assert path == home / "credentials"
    assert _mode(path) == 0o600
    data = json.loads(path.read_text())
    assert data["default"] == {"api_key": "admin-key", "principal": "admin"}
    assert data["servers"] == {"http://remote:9000": {"api_key": "remote-key", "principal": "alice"}}


def test_save_login_keeps_default_and_other_servers_and_replaces_its_own(tmp_path: Path) -> None:
    home = tmp_path / "h"
    creds.save_default(home, "admin-key", "admin")
    creds.save_login("http://a:1", "a-key", "alice", home=home)
    creds.save_login("http://b:2", "b-key", "bob", home=home)
    creds.save_login("HTTP://A:1/", "a-key-2", "alice", home=home)  # the same server, spelled otherwise
    data = json.loads((home / "credentials").read_text())
    assert data["default"]["api_key"] == "admin-key"
    assert data["servers"] == {"http://a:1": {"api_key": "a-key-2", "principal": "alice"},
                               "http://b:2": {"api_key": "b-key", "principal": "bob"}}
    assert _mode(home / "credentials") == 0o600


def test_a_file_written_wider_becomes_0600_on_the_next_write(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "credentials").write_text("{}")
    os.chmod(home / "credentials", 0o644)
    creds.save_login("http://a", "k", "p", home=home)
    assert _mode(home / "credentials") == 0o600


def test_lookup_prefers_the_server_entry_then_default(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert creds.load_api_key("http://127.0.0.1:8000", home=home) is None  # no file
    creds.save_default(home, "admin-key", "admin")
    creds.save_login("http://127.0.0.1:8000", "login-key", "alice", home=home)
    assert creds.load_api_key("http://127.0.0.1:8000", home=home) == "login-key"
    assert creds.load_api_key("http://127.0.0.1:8000/", home=home) == "login-key"
    assert creds.load_api_key("http://LOCALHOST:8000", home=home) == "admin-key"  # another name: default
    assert creds.load_api_key("https://other.example", home=home) is None  # the local admin key stays local


def test_lookup_without_default_is_none_for_other_servers(tmp_path: Path) -> None:
    home = tmp_path / "h"
    creds.save_login("https://models.example.com", "k", "alice", home=home)
    assert creds.load_api_key("https://models.example.com:443/", home=home) == "k"  # default port dropped
    assert creds.load_api_key("http://models.example.com", home=home) is None


def test_home_defaults_to_modelyard_home(_clean_env: Path) -> None:
    creds.save_default(None, "admin-key", "admin")
    assert (_clean_env / "credentials").is_file()
    assert creds.load_api_key("http://localhost:8000") == "admin-key"
    assert creds.load_api_key("http://anything") is None  # never sent to another machine


def test_the_write_is_atomic_a_failed_write_leaves_the_old_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "h"
    creds.save_default(home, "admin-key", "admin")
    before = (home / "credentials").read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(creds.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        creds.save_login("http://a", "k", "p", home=home)
    assert (home / "credentials").read_text() == before
    assert sorted(p.name for p in home.iterdir()) == ["credentials", "credentials.lock"]  # no temp file left


def test_the_file_is_replaced_never_rewritten_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "h"
    creds.save_default(home, "admin-key", "admin")
    calls: list[tuple[str, str]] = []
    real = os.replace

    def spy(src: str, dst: str) -> None:
        calls.append((str(src), str(dst)))
        assert _mode(Path(src)) == 0o600  # already private before it takes the name
        real(src, dst)

    monkeypatch.setattr(creds.os, "replace", spy)
    creds.save_login("http://a", "k", "p", home=home)
    [(src, dst)] = calls
    assert Path(src).parent == home and dst == str(home / "credentials")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    home = tmp_path / "h"
    threads = [threading.Thread(target=creds.save_login, args=(f"http://s{i}", f"k{i}", f"p{i}"),
                                kwargs={"home": home}) for i in range(16)]
    threads.append(threading.Thread(target=creds.save_default, args=(home, "admin-key", "admin")))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads((home / "credentials").read_text())
    assert len(data["servers"]) == 16 and data["default"]["api_key"] == "admin-key"


def test_a_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "credentials").write_text("{not json")
    with pytest.raises(CredentialsError, match="not valid JSON"):
        creds.load_api_key("http://a", home=home)
    (home / "credentials").write_text("[]")
    with pytest.raises(CredentialsError, match="JSON object"):
        creds.load_api_key("http://a", home=home)


# ---- the client's key and header ------------------------------------------------------------------


def _recording(seen: list[httpx.Request], status: int = 200, body: object = None) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json={"status": "ok"} if body is None else body)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_the_argument_key_is_sent_as_bearer_on_every_request() -> None:
    seen: list[httpx.Request] = []
    http = _recording(seen)
    client = Modelyard("http://server", api_key="arg-key", http_client=http)
    client.health()
    with client.stream("GET", "/health") as response:
        response.read()
    assert [r.headers["authorization"] for r in seen] == ["Bearer arg-key"] * 2
    assert "authorization" not in http.headers  # not put on a shared client's defaults
    assert "arg-key" not in repr(client)


def test_env_key_wins_over_the_file_and_the_argument_over_both(_clean_env: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    creds.save_default(_clean_env, "file-key", "admin")
    seen: list[httpx.Request] = []
    Modelyard("http://127.0.0.1:8000", http_client=_recording(seen)).health()
    monkeypatch.setenv("MODELYARD_API_KEY", "env-key")
    Modelyard("http://127.0.0.1:8000", http_client=_recording(seen)).health()
    Modelyard("http://127.0.0.1:8000", api_key="arg-key", http_client=_recording(seen)).health()
    assert [r.headers["authorization"] for r in seen] == ["Bearer file-key", "Bearer env-key", "Bearer arg-key"]


def test_the_file_entry_for_the_url_is_used(_clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds.save_default(_clean_env, "admin-key", "admin")
    creds.save_login("http://server:8000", "alice-key", "alice")
    seen: list[httpx.Request] = []
    Modelyard("http://server:8000/", http_client=_recording(seen)).health()
    monkeypatch.setenv("MODELYARD_URL", "http://server:8000")
    Modelyard(http_client=_recording(seen)).health()
    Modelyard("http://localhost:8000", http_client=_recording(seen)).health()
    Modelyard("http://elsewhere:8000", http_client=_recording(seen)).health()
    assert [r.headers.get("authorization") for r in seen] == [
        "Bearer alice-key", "Bearer alice-key", "Bearer admin-key", None]


def test_no_key_anywhere_sends_no_header() -> None:
    seen: list[httpx.Request] = []
    Modelyard("http://server", http_client=_recording(seen)).health()
    assert "authorization" not in seen[0].headers


def test_a_callers_authorization_header_wins() -> None:
    seen: list[httpx.Request] = []
    client = Modelyard("http://server", api_key="mine", http_client=_recording(seen))
    client.request("GET", "/health", headers={"Authorization": "Bearer other"})
    assert seen[0].headers["authorization"] == "Bearer other"


def test_two_clients_sharing_one_http_client_send_their_own_keys() -> None:
    seen: list[httpx.Request] = []
    http = _recording(seen)
    Modelyard("http://server", api_key="a", http_client=http).health()
    Modelyard("http://server", api_key="b", http_client=http).health()
    assert [r.headers["authorization"] for r in seen] == ["Bearer a", "Bearer b"]


def test_downloads_carry_the_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"data")

    client = Modelyard("http://server", api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    client.filesets.download_file("default", "fs", "a.bin", tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert seen[0].headers["authorization"] == "Bearer k"


@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationError), (403, PermissionDeniedError),
                                               (429, RateLimitError)])
def test_auth_statuses_raise_their_classes(status: int, error: type[Exception]) -> None:
    seen: list[httpx.Request] = []
    client = Modelyard("http://server", api_key="k", http_client=_recording(seen, status, {"detail": "nope"}))
    with pytest.raises(error, match="nope"):
        client.health()


def test_rate_limit_error_reads_retry_after() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "7"})

    client = Modelyard("http://server", http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    with pytest.raises(RateLimitError) as caught:
        client.health()
    assert caught.value.retry_after == 7.0


# ---- the new resources' requests ------------------------------------------------------------------


def test_resources_send_the_documented_requests() -> None:
    seen: list[httpx.Request] = []
    key = {"jti": "j1", "name": "ci", "principal": "alice", "status": "active", "token": "tok",
           "token_type": "Bearer", "scopes": ["models:read"], "future_field": 1}
    answers = {
        ("POST", "/apis/auth/v2/access-keys"): key,
        ("GET", "/apis/auth/v2/access-keys"): {"data": [{k: v for k, v in key.items() if k != "token"}],
                                               "has_more": False},
        ("DELETE", "/apis/auth/v2/access-keys/j1"): {"jti": "j1", "revoked": True},
        ("POST", "/apis/auth/v2/access-keys/j1/suspend"): {"jti": "j1", "status": "suspended", "changed": True},
        ("POST", "/apis/auth/v2/access-keys/j1/unsuspend"): {"jti": "j1", "status": "active", "changed": True},
        ("GET", "/apis/entities/v2/workspaces/ws/members"): {"data": [{"principal": "bob", "roles": ["Viewer"]}]},
        ("POST", "/apis/entities/v2/workspaces/ws/members"): {"principal": "bob", "roles": ["Editor"]},
        ("PUT", "/apis/entities/v2/workspaces/ws/members/bob"): {"principal": "bob", "roles": ["Admin"]},
        ("DELETE", "/apis/entities/v2/workspaces/ws/members/bob"): {"id": "bob", "message": "removed"},
        ("POST", "/apis/secrets/v2/workspaces/ws/secrets"): {"name": "tok", "workspace": "ws"},
        ("GET", "/apis/secrets/v2/workspaces/ws/secrets"): {
            "data": [{"name": "tok", "workspace": "ws"}], "sort": "name", "filter": {},
            "pagination": {"page": 1, "page_size": 10, "current_page_size": 1, "total_pages": 1,
                           "total_results": 1}},
        ("GET", "/apis/secrets/v2/workspaces/ws/secrets/tok"): {"name": "tok", "workspace": "ws"},
        ("PATCH", "/apis/secrets/v2/workspaces/ws/secrets/tok"): {"name": "tok", "workspace": "ws",
                                                                  "description": "d"},
        ("GET", "/apis/secrets/v2/workspaces/ws/secrets/tok/access"): {"name": "tok", "workspace": "ws",
                                                                       "value": "s3cret"},
        ("GET", "/apis/auth/authenticate"): {"principal": "alice", "groups": [], "scopes": None,
                                             "token_kind": "access_key"},
    }

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "DELETE" and request.url.path.endswith("/secrets/tok"):
            return httpx.Response(204)
        return httpx.Response(201 if request.method == "POST" else 200,
                              json=answers[(request.method, request.url.path)])

    client = Modelyard("http://server", api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    created = client.access_keys.create(name="ci", scopes=["models:read"], expires_in_seconds=60)
    assert created.token == "tok" and created.model_extra == {"future_field": 1}
    assert json.loads(seen[-1].content) == {"name": "ci", "scopes": ["models:read"], "expires_in_seconds": 60}
    assert client.access_keys.list().data[0].jti == "j1"
    assert client.access_keys.revoke("j1").revoked is True
    assert client.access_keys.suspend("j1").status == "suspended"
    assert client.access_keys.unsuspend("j1").changed is True
    assert client.members.list("ws").data[0].roles == ["Viewer"]
    assert client.members.add("ws", "bob").roles == ["Editor"]
    assert json.loads(seen[-1].content) == {"principal": "bob", "roles": ["Editor"]}
    assert client.members.update("ws", "bob", ["Admin"]).roles == ["Admin"]
    assert json.loads(seen[-1].content) == {"roles": ["Admin"]}
    assert client.members.remove("ws", "bob").message == "removed"
    assert client.secrets.create("ws", "tok", "s3cret").name == "tok"
    assert json.loads(seen[-1].content) == {"name": "tok", "value": "s3cret"}
    assert [s.name for s in client.secrets.list("ws")] == ["tok"]
    assert client.secrets.retrieve("ws", "tok").workspace == "ws"
    assert client.secrets.update("ws", "tok", description="d").description == "d"
    assert json.loads(seen[-1].content) == {"description": "d"}
    value = client.secrets.access("ws", "tok")
    assert value.value == "s3cret" and "s3cret" not in repr(value)
    client.secrets.delete("ws", "tok")
    assert client.auth.whoami().principal == "alice"
    assert {r.headers["authorization"] for r in seen} == {"Bearer k"}


def test_a_key_set_on_a_given_http_client_wins_over_the_file_not_over_the_argument(
        _clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds.save_default(_clean_env, "file-key", "admin")
    seen: list[httpx.Request] = []
    http = _recording(seen)
    http.headers["Authorization"] = "Bearer configured"
    Modelyard("http://server", http_client=http).health()
    monkeypatch.setenv("MODELYARD_API_KEY", "env-key")
    Modelyard("http://server", http_client=http).health()
    Modelyard("http://server", api_key="arg-key", http_client=http).health()
    assert [r.headers["authorization"] for r in seen] == ["Bearer configured", "Bearer configured", "Bearer arg-key"]


def test_access_keys_list_all_follows_has_more() -> None:
    pages = {"1": {"data": [{"jti": "a"}, {"jti": "b"}], "has_more": True},
             "2": {"data": [{"jti": "c"}], "has_more": False}}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("page", "1")])

    client = Modelyard("http://server", http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    assert [k.jti for k in client.access_keys.list_all()] == ["a", "b", "c"]


def test_secrets_update_sends_only_what_is_given_and_none_clears_the_description() -> None:
    bodies: list[object] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"name": "s", "workspace": "ws"})

    client = Modelyard("http://server", http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    client.secrets.update("ws", "s", value="v")
    client.secrets.update("ws", "s", description=None)
    client.secrets.update("ws", "s", value="v2", description="d")
    assert bodies == [{"value": "v"}, {"description": None}, {"value": "v2", "description": "d"}]


def test_the_sdk_imports_without_the_server_stack() -> None:
    """The SDK (credentials and auth resources included) loads neither FastAPI nor SQLAlchemy."""
    import subprocess
    import sys

    code = ("import sys, modelyard.client, modelyard.client.credentials, modelyard.client.types_auth; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'sqlalchemy', 'uvicorn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
