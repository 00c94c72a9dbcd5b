"""Who may do what: the permission matrix over the routes (SQLite and PostgreSQL), keys that stop
working the moment they are revoked or suspended, the official SDKs with nothing but a key, and the
failures that must be 401/403/404/429 and change nothing."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import together
from together import Together

from modelyard.client import Modelyard
from modelyard.config import Settings
from tests.conftest import as_user, free_port, make_fileset

TEAM = "team"
M = f"/apis/models/v2/workspaces/{TEAM}"
F = f"/apis/files/v2/workspaces/{TEAM}"
S = f"/apis/secrets/v2/workspaces/{TEAM}"
E = f"/apis/entities/v2/workspaces/{TEAM}"
V1 = {"X-Modelyard-Workspace": TEAM}

ROLES = ("none", "Viewer", "Editor", "Admin", "PlatformAdmin", "inference-reader")
# route -> expected status per role, in the order of ROLES; {r} is the role's own suffix (no clashes)
MATRIX: list[tuple[str, str, object, dict[str, str] | None, tuple[int, ...]]] = [
    ("GET", f"{E}", None, None, (404, 200, 200, 200, 200, 403)),
    ("GET", f"{M}/models", None, None, (404, 200, 200, 200, 200, 403)),
    ("GET", f"{M}/models/mdl", None, None, (404, 200, 200, 200, 200, 403)),
    ("POST", f"{M}/models", {"name": "new-{r}"}, None, (404, 403, 201, 201, 201, 403)),
    ("PATCH", f"{M}/models/mdl", {"description": "by {r}"}, None, (404, 403, 200, 200, 200, 403)),
    ("DELETE", f"{M}/models/gone-" + "{r}", None, None, (404, 403, 204, 204, 204, 403)),
    ("GET", f"{M}/adapters", None, None, (404, 200, 200, 200, 200, 403)),
    ("POST", f"{M}/adapters", {"name": "ad-{r}", "model": "mdl", "fileset": "fs", "finetuning_type": "lora"},
     None, (404, 403, 201, 201, 201, 403)),
    ("GET", f"{F}/filesets", None, None, (404, 200, 200, 200, 200, 403)),
    ("POST", f"{F}/filesets", {"name": "fs-{r}"}, None, (404, 403, 200, 200, 200, 403)),
    ("GET", f"{F}/filesets/fs/-/README.md", None, None, (404, 200, 200, 200, 200, 403)),
    ("PUT", f"{F}/filesets/fs/-/by-" + "{r}.txt", b"x", None, (404, 403, 200, 200, 200, 403)),
    ("GET", f"{S}/secrets", None, None, (404, 200, 200, 200, 200, 403)),
    ("POST", f"{S}/secrets", {"name": "s-{r}", "value": "v"}, None, (404, 403, 201, 201, 201, 403)),
    ("GET", f"{S}/secrets/token/access", None, None, (404, 403, 200, 200, 200, 403)),
    ("GET", f"{E}/members", None, None, (404, 200, 200, 200, 200, 403)),
    ("POST", f"{E}/members", {"principal": "m-{r}@x", "roles": ["Viewer"]}, None, (404, 403, 403, 201, 201, 403)),
    ("GET", "/v1/models", None, V1, (404, 200, 200, 200, 200, 200)),
    ("POST", "/v1/chat/completions", {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}, V1,
     (404, 404, 404, 404, 404, 403)),
    ("GET", "/v1/endpoints", None, V1, (404, 200, 200, 200, 200, 403)),
    ("POST", "/v1/endpoints", {"model": "mdl", "hardware": "cpu",
                               "autoscaling": {"min_replicas": 0, "max_replicas": 1}}, V1,
     (404, 403, 400, 400, 400, 403)),
    ("GET", f"/apis/inference-gateway/v2/workspaces/{TEAM}/openai/-/v1/models", None, None,
     (404, 200, 200, 200, 200, 200)),
    ("GET", f"{M}/providers", None, None, (404, 200, 200, 200, 200, 403)),
    ("POST", f"{M}/providers", {"name": "p-{r}", "host_url": "http://127.0.0.1:9"}, None,
     (404, 403, 201, 201, 201, 403)),
    ("GET", f"/apis/inference-gateway/v2/workspaces/{TEAM}/virtual-models", None, None,
     (404, 200, 200, 200, 200, 200)),
    ("POST", f"/apis/inference-gateway/v2/workspaces/{TEAM}/virtual-models",
     {"name": "vm-{r}", "default_model_entity": "ghost"}, None, (404, 403, 400, 400, 400, 403)),
    ("POST", "/v1/messages", {"model": "ghost", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
     V1, (404, 404, 404, 404, 404, 403)),
    ("GET", "/apis/auth/v2/audit", None, None, (200, 200, 200, 200, 200, 403)),
    ("GET", "/v1/usage", None, V1, (404, 200, 200, 200, 200, 200)),
]


@pytest.fixture
def team(client: Modelyard) -> dict[str, Modelyard]:
    """Workspace ``team`` (made by the PlatformAdmin) and one client per role in it."""
    client.workspaces.create(TEAM)
    make_fileset(client, f"{TEAM}/fs")
    client.models.create(TEAM, name="mdl")
    client.secrets.create(TEAM, "token", "s3cr3t-value")
    for role in ROLES:
        client.models.create(TEAM, name=f"gone-{role.lower()}")
    users = {
        "none": as_user(client, "nobody@x"),
        "Viewer": as_user(client, "viewer@x", {TEAM: "Viewer"}),
        "Editor": as_user(client, "editor@x", {TEAM: "Editor"}),
        "Admin": as_user(client, "admin@x", {TEAM: "Admin"}),
        "PlatformAdmin": client,
        "inference-reader": as_user(client, "reader@x", {TEAM: "Viewer"}, scopes=["inference:read"]),
    }
    return users


def _send(user: Modelyard, method: str, path: str, body: object, headers: dict[str, str] | None,
          role: str) -> httpx.Response:
    suffix = role.lower()
    path = path.replace("{r}", suffix)
    kwargs: dict[str, object] = {"headers": {**(headers or {}), **_key(user)}}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = {k: v.replace("{r}", suffix) if isinstance(v, str) else v for k, v in body.items()}  # type: ignore[union-attr]
    return user._http.request(method, user.base_url + path, **kwargs)  # type: ignore[arg-type]


def _key(user: Modelyard) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.api_key}"} if user.api_key else {}


def test_the_permission_matrix(team: dict[str, Modelyard], client: Modelyard) -> None:
    wrong = []
    for method, path, body, headers, expected in MATRIX:
        for role, status in zip(ROLES, expected, strict=True):
            response = _send(team[role], method, path, body, headers, role)
            if response.status_code != status:
                wrong.append(f"{role:16} {method} {path}: {response.status_code} (expected {status}) "
                             f"{response.text[:150]}")
    assert not wrong, "\n".join(wrong)
    # what was refused changed nothing
    names = {m.name for m in client.models.list(TEAM).data}
    assert {"new-editor", "new-admin", "new-platformadmin"} <= names
    assert not names & {"new-none", "new-viewer", "new-inference-reader"}
    assert {"gone-none", "gone-viewer", "gone-inference-reader"} <= names
    assert client.models.retrieve(TEAM, "mdl").description == "by platformadmin"


def test_a_hidden_workspace_does_not_leak_and_lists_show_only_ones_own(team: dict[str, Modelyard],
                                                                      client: Modelyard) -> None:
    nobody = team["none"]
    listed = {w.name for w in nobody.workspaces.list().data}
    assert TEAM not in listed and {"default", "system"} <= listed
    assert all(m.workspace != TEAM for m in nobody.models.list("-").data)
    assert all(f.workspace != TEAM for f in nobody.filesets.list("-").data)
    missing = _send(nobody, "GET", "/apis/models/v2/workspaces/no-such-ws/models", None, None, "none")
    hidden = _send(nobody, "GET", f"{M}/models", None, None, "none")
    assert (missing.status_code, hidden.status_code) == (404, 404)
    assert hidden.json()["detail"] == f"Workspace '{TEAM}' not found"  # same words as a missing one
    # a base model or fileset in a hidden workspace is answered as missing, from the caller's own workspace
    nobody.workspaces.create("mine")
    refused = _send(nobody, "POST", "/apis/models/v2/workspaces/mine/adapters",
                    {"name": "sneaky", "model": f"{TEAM}/mdl", "fileset": f"{TEAM}/fs", "finetuning_type": "lora"},
                    None, "none")
    assert refused.status_code == 404 and "not found" in refused.text
    refused = _send(nobody, "POST", "/apis/models/v2/workspaces/mine/models",
                    {"name": "sneaky", "fileset": f"{TEAM}/fs"}, None, "none")
    assert refused.status_code == 400 and "not found" in refused.text
    # the creator of a workspace is its Admin; the PlatformAdmin sees it too
    assert [m.roles for m in nobody.members.list("mine").data] == [["Admin"]]
    assert "mine" in {w.name for w in client.workspaces.list().data}


def test_tokens_are_refused_with_the_reason(client: Modelyard, settings: Settings) -> None:
    http = client._http
    token = http.headers["Authorization"].removeprefix("Bearer ")
    cases = {
        "": "missing bearer token",
        "Bearer not-a-jwt": "malformed token",
        "Bearer " + token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"): "signature",
    }
    for header, reason in cases.items():
        response = http.get("/apis/entities/v2/workspaces", headers={"Authorization": header})
        assert response.status_code == 401 and reason in response.json()["detail"], response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    short = client.access_keys.create(expires_in_seconds=1)
    time.sleep(2.1)
    response = http.get("/apis/entities/v2/workspaces", headers={"Authorization": f"Bearer {short.token}"})
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    assert client.access_keys.list().data[0].status == "EXPIRED"


def test_revoke_and_suspend_take_effect_on_the_next_request(client: Modelyard) -> None:
    bob = as_user(client, "bob@x")
    assert bob.auth.whoami().principal == "bob@x"
    jti = bob.auth.whoami().jti
    assert bob.access_keys.suspend(jti).status == "SUSPENDED"  # type: ignore[arg-type]
    response = bob._http.get(bob.base_url + "/apis/auth/authenticate", headers=_key(bob))
    assert response.status_code == 401 and "suspended" in response.json()["detail"]
    assert client.access_keys.unsuspend(jti).status == "ACTIVE"  # type: ignore[arg-type]
    assert bob.auth.whoami().principal == "bob@x"
    assert client.access_keys.revoke(jti).revoked is True  # type: ignore[arg-type]
    response = bob._http.get(bob.base_url + "/apis/auth/authenticate", headers=_key(bob))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_keys_cannot_escalate(client: Modelyard) -> None:
    narrow = as_user(client, "carol@x", scopes=["models:read"])
    refused = _send(narrow, "POST", "/apis/auth/v2/access-keys", {"scopes": ["models:write"]}, None, "x")
    assert refused.status_code == 400 and "scopes its creator lacks" in refused.text
    inherited = narrow.access_keys.create()
    assert inherited.scopes == ["models:read"]
    for body in ({"principal": "admin"}, {"service_account_id": "ci"}):
        refused = _send(narrow, "POST", "/apis/auth/v2/access-keys", body, None, "x")
        assert refused.status_code == 403 and "PlatformAdmin" in refused.text
    plain = as_user(client, "dave@x")
    assert {k.principal for k in plain.access_keys.list().data} == {"dave@x"}  # only its own keys
    other = client.access_keys.list().data[-1].jti
    assert _send(plain, "DELETE", f"/apis/auth/v2/access-keys/{other}", None, None, "x").status_code == 404


def test_failed_authentication_is_rate_limited(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from modelyard.app import create_app

    app = create_app(settings.model_copy(update={"auth_failures_per_minute": 5}))
    with TestClient(app) as http:
        statuses = [http.get("/v1/models", headers={"Authorization": "Bearer guess"}).status_code for _ in range(7)]
        assert statuses == [401] * 5 + [429] * 2
        limited = http.get("/v1/models", headers={"Authorization": "Bearer guess"})
        assert int(limited.headers["Retry-After"]) > 0 and limited.json()["error"]["type"] == "rate_limit_error"
    with TestClient(create_app(settings.model_copy(update={"auth_failures_per_minute": 5}))) as http:
        # a request with no key guesses nothing (browsers ask for /favicon.ico on every page): never limited
        assert {http.get("/favicon.ico").status_code for _ in range(10)} == {401}
        assert http.get("/v1/models", headers={"Authorization": "Bearer guess"}).status_code == 401


def test_dns_rebinding_hosts_are_refused(client: Modelyard) -> None:
    refused = client._http.get("/health", headers={"Host": "attacker.example"})
    assert refused.status_code == 400 and "MODELYARD_ALLOWED_HOSTS" in refused.text
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "10.1.2.3"):
        assert client._http.get("/health", headers={"Host": host}).status_code == 200


def test_the_official_sdks_work_with_only_a_key(client: Modelyard, live_server: str,
                                               fixture_models: dict[str, Path]) -> None:
    """A key with a default workspace is all the OpenAI and Together SDKs need; the same key finds
    nothing of another team's."""
    from tests.endpoints.conftest import register

    with Modelyard(live_server) as admin:
        register(admin, fixture_models)  # the other team's model and adapters, in 'default'
        admin.workspaces.create("team-b")
        admin.members.remove("default", "*")  # 'default' is no longer shared with everyone
        theirs = Together(api_key=admin.api_key, base_url=live_server + "/v1", max_retries=0)
        their_endpoint = theirs.endpoints.create(model="tiny", hardware="cpu",
                                                 autoscaling={"min_replicas": 0, "max_replicas": 1})
        key = admin.access_keys.create(principal="bea@team-b", workspace="team-b")
        admin.members.add("team-b", "bea@team-b", roles=["Editor"])
    os.environ.pop("MODELYARD_API_KEY", None)
    tg = Together(api_key=key.token, base_url=live_server + "/v1", max_retries=0)
    oa = openai.OpenAI(api_key=key.token, base_url=live_server + "/v1", max_retries=0)
    assert [m.id for m in oa.models.list()] == []  # team-b serves nothing yet; no header was sent
    assert tg.endpoints.list().data == []
    with pytest.raises(together.NotFoundError):
        tg.endpoints.retrieve(their_endpoint.id)
    with pytest.raises(together.NotFoundError):
        tg.endpoints.adapters.add(their_endpoint.id, model_id=f"{their_endpoint.name}:pirate")
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="pirate", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):  # the other workspace, named explicitly: hidden too
        oa.chat.completions.create(model="default/pirate", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers={"X-Modelyard-Workspace": "default"})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=live_server + "/v1", max_retries=0).models.list()


def test_a_key_revoked_in_one_process_is_refused_by_another_at_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two server processes on one PostgreSQL database, each with its own home (as on two machines),
    sharing MODELYARD_SECRET_KEY."""
    from tests.conftest import _reset

    _reset(postgres_url)
    secret = base64.urlsafe_b64encode(b"k" * 32).decode()  # a Fernet key both processes share
    servers, urls = [], []
    try:
        for n in range(2):
            port = free_port()
            env = {**os.environ, "MODELYARD_HOME": str(tmp_path / f"home{n}"), "MODELYARD_DATABASE_URL": postgres_url,
                   "MODELYARD_SECRET_KEY": secret}
            env.pop("MODELYARD_API_KEY", None)
            log = open(tmp_path / f"server{n}.log", "wb")  # noqa: SIM115 - closed with the process
            servers.append(subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "serve", "--port", str(port)],
                                            env=env, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(urls[-1] + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert servers[-1].poll() is None and time.monotonic() < deadline, (tmp_path / f"server{n}.log").read_text()
                time.sleep(0.2)
        from modelyard.client.credentials import read_credentials

        admin_key = read_credentials(tmp_path / "home0")["default"]["api_key"]  # the first start made it
        with Modelyard(urls[0], api_key=admin_key) as first, Modelyard(urls[1], api_key=admin_key) as second:
            key = first.access_keys.create(principal="eve@x")
            with Modelyard(urls[1], api_key=key.token) as eve:
                assert eve.auth.whoami().principal == "eve@x"  # made in process 1, accepted by process 2
                second.access_keys.revoke(key.jti)
            response = httpx.get(urls[0] + "/apis/auth/authenticate", headers={"Authorization": f"Bearer {key.token}"})
            assert response.status_code == 401 and "revoked" in response.json()["detail"]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)


def test_secrets_never_leave_except_through_access(team: dict[str, Modelyard], client: Modelyard,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    editor, viewer = team["Editor"], team["Viewer"]
    assert editor.secrets.access(TEAM, "token").value == "s3cr3t-value"
    for user in (viewer, editor):
        for path in (f"{S}/secrets", f"{S}/secrets/token"):
            assert "s3cr3t-value" not in _send(user, "GET", path, None, None, "x").text
    assert _send(viewer, "GET", f"{S}/secrets/token/access", None, None, "x").status_code == 403
    assert "s3cr3t-value" not in caplog.text
    audit = client.request("GET", "/apis/auth/v2/audit").json()["data"]
    assert audit and "s3cr3t-value" not in str(audit)


def test_auth_off_is_refused_on_a_reachable_address(tmp_path: Path) -> None:
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path), "MODELYARD_AUTH": "off"}
    env.pop("MODELYARD_ALLOW_INSECURE", None)
    done = subprocess.run([sys.executable, "-m", "modelyard.cli.main", "serve", "--host", "0.0.0.0", "--port",
                           str(free_port())], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "MODELYARD_ALLOW_INSECURE" in done.stdout
    Settings(auth="off", allow_insecure=True).check_bind("0.0.0.0")  # told to: allowed
    Settings(auth="off").check_bind("127.0.0.1")


def test_a_trusted_workspace_s_files_are_written_by_its_admins_only(client: Modelyard) -> None:
    """Remote code may run from a trusted workspace's filesets, so an Editor there cannot change them."""
    make_fileset(client, "trusted/ckpt")
    editor = as_user(client, "ed@x", {"trusted": "Editor"})
    admin = as_user(client, "ad@x", {"trusted": "Admin"})
    path = "/apis/files/v2/workspaces/trusted/filesets/ckpt/-/modeling.py"
    refused = _send(editor, "PUT", path, b"import os", None, "x")
    assert refused.status_code == 403 and "Admin" in refused.json()["detail"]
    assert _send(editor, "GET", "/apis/files/v2/workspaces/trusted/filesets/ckpt/-/README.md", None, None,
                 "x").status_code == 200
    assert _send(admin, "PUT", path, b"import os", None, "x").status_code == 200
