"""The console over plain HTTP (no browser): sign-in, sessions and CSRF, what a key may see, the
off switch, secrets never shown, in-process streaming, and the offline /docs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.client import Modelyard
from modelyard.config import Settings
from modelyard.console import mount_console, mount_offline_docs
from modelyard.console.inprocess import ApiCaller
from modelyard.console.session import SESSION_COOKIE
from tests.conftest import admin_key, make_fileset
from tests.console.conftest import csrf_of, sign_in

PAGES = ("models", "adapters", "filesets", "endpoints", "playground", "usage")


def _console(client: Modelyard) -> TestClient:
    """The SDK's TestClient, used as a browser: the console reads only its cookie."""
    http: TestClient = client._http  # type: ignore[assignment]
    http.cookies.clear()
    return http


def test_signed_out_visitors_are_sent_to_sign_in(client: Modelyard) -> None:
    http = _console(client)
    for path in ("/console", "/console/workspaces", *(f"/console/w/default/{page}" for page in PAGES)):
        answer = http.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/signin"), path
    # the page asked for is where sign-in leads back to
    answer = http.get("/console/w/default/models", follow_redirects=False)
    assert answer.headers["location"] == "/console/signin?next=%2Fconsole%2Fw%2Fdefault%2Fmodels"
    assert http.put("/console/w/default/filesets/x/-/a.txt", content=b"x").status_code == 401
    assert http.post("/console/w/default/playground/chat", json={"model": "m"}).status_code == 401
    # a wrong key is refused with the API's message, and no session is made
    page = http.get("/console/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    refused = http.post("/console/signin", data={"api_key": "not-a-key", "csrf_token": token})
    assert refused.status_code == 401 and "The key was refused" in refused.text
    assert SESSION_COOKIE not in http.cookies


def test_sign_in_cookie_and_sign_out(app: FastAPI, client: Modelyard) -> None:
    http = _console(client)
    page = http.get("https://testserver/console/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = http.post("https://testserver/console/signin", data={"api_key": admin_key(app.state.settings),
                                                                 "csrf_token": token, "next": "/console/workspaces"},
                       follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/workspaces"
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Secure" in cookie
    assert "Path=/console" in cookie
    home = http.get("https://testserver/console/workspaces")
    assert home.status_code == 200 and ">default<" in home.text and "admin" in home.text
    # sign-out needs the form's token too, then the session is gone
    assert http.post("https://testserver/console/signout", data={}).status_code == 403
    out = http.post("https://testserver/console/signout", data={"csrf_token": csrf_of(home.text)},
                    follow_redirects=False)
    assert out.status_code == 303
    assert http.get("https://testserver/console/workspaces", follow_redirects=False).status_code == 303


def test_every_form_and_script_call_needs_the_csrf_token(app: FastAPI, client: Modelyard) -> None:
    http = sign_in(_console(client), admin_key(app.state.settings))
    token = csrf_of(http.get("/console/w/default/filesets").text)
    for path, data in (("/console/workspaces", {"name": "sneaky"}),
                       ("/console/w/default/filesets", {"name": "sneaky"}),
                       ("/console/w/default/models", {"name": "sneaky"}),
                       ("/console/w/default/adapters", {"name": "sneaky", "model": "default/x", "fileset": "x"}),
                       ("/console/w/default/endpoints", {"model": "default/x"}),
                       ("/console/w/default/endpoints/ep-1/stop", {})):
        for given in ({}, {"csrf_token": "0" * 64}):
            answer = http.post(path, data={**data, **given}, follow_redirects=False)
            assert answer.status_code == 403, (path, given)
            assert "CSRF" in answer.text
    assert client.filesets.list("default").data == []  # nothing was created
    assert http.put("/console/w/default/filesets/x/-/a.txt", content=b"x").status_code == 403
    assert http.post("/console/w/default/playground/chat", json={"model": "m"}).status_code == 403
    # the sign-in form has its own token (a random cookie's HMAC): a forged sign-in is refused
    http.cookies.clear()
    forged = http.post("/console/signin", data={"api_key": admin_key(app.state.settings), "csrf_token": "x"})
    assert forged.status_code == 403 and SESSION_COOKIE not in http.cookies
    # with the token, the same form works
    sign_in(http, admin_key(app.state.settings))
    token = csrf_of(http.get("/console/w/default/filesets").text)
    made = http.post("/console/w/default/filesets", data={"name": "made-here", "csrf_token": token},
                     follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"] == "/console/w/default/filesets/made-here"
    assert [f.name for f in client.filesets.list("default").data] == ["made-here"]
    upload = http.put("/console/w/default/filesets/made-here/-/dir/a.txt", content=b"hello",
                      headers={"X-CSRF-Token": token})
    assert upload.status_code == 200, upload.text
    assert http.get("/console/w/default/filesets/made-here/-/dir/a.txt").content == b"hello"
    assert "dir/a.txt" in http.get("/console/w/default/filesets/made-here").text


def test_a_viewer_sees_nothing_of_other_workspaces_and_gets_the_apis_refusals(app: FastAPI,
                                                                              client: Modelyard) -> None:
    make_fileset(client, "hidden-team/weights")
    client.models.create("hidden-team", name="hidden-model", fileset="hidden-team/weights")
    make_fileset(client, "viewed/weights")
    client.models.create("viewed", name="visible-model", fileset="viewed/weights")
    client.members.add("viewed", "viola@example.com", roles=["Viewer"])
    viewer_key = client.access_keys.create(principal="viola@example.com").token
    http = sign_in(_console(client), viewer_key)
    listing = http.get("/console/workspaces").text
    assert "viewed" in listing and "hidden-team" not in listing
    models = http.get("/console/w/viewed/models")
    assert models.status_code == 200 and "visible-model" in models.text and "hidden-team" not in models.text
    for page in PAGES:  # the other workspace answers as the API does: 404, naming nothing of it
        answer = http.get(f"/console/w/hidden-team/{page}")
        assert answer.status_code == 404, page
        assert "hidden-model" not in answer.text and "weights" not in answer.text
    assert http.get("/console/w/hidden-team/filesets/weights/-/README.md").status_code == 404
    # an action the role does not allow shows the API's own message
    token = csrf_of(models.text)
    refused = http.post("/console/w/viewed/models", data={"name": "nope", "fileset": "viewed/weights",
                                                          "csrf_token": token})
    assert refused.status_code == 200 and 'role="alert"' in refused.text
    assert "Editor" in refused.text  # the API's 403 names the role that is missing
    assert [m.name for m in client.models.list("viewed").data] == ["visible-model"]


def test_no_secret_is_ever_shown(app: FastAPI, client: Modelyard) -> None:
    key = admin_key(app.state.settings)
    client.secrets.create("default", "provider-key", value="sk-verysecret-123")
    client.models.create("default", name="remote", api_endpoint={"url": "https://api.example.com/v1",
                                                                 "model_id": "m", "api_key": "sk-inline-456"})
    http = sign_in(_console(client), key)
    cookie = http.cookies[SESSION_COOKIE]
    assert key not in cookie  # the cookie holds the key encrypted
    for page in ("/console/workspaces", *(f"/console/w/default/{p}" for p in PAGES)):
        text = http.get(page).text
        for secret in ("sk-verysecret-123", "sk-inline-456", key):
            assert secret not in text, (page, secret[:6])
    assert "remote" in http.get("/console/w/default/models").text


def test_console_off_answers_404_and_docs_stay_offline(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'off.db'}", console="off")
    app = create_app(settings)
    mount_console(app)
    mount_offline_docs(app)
    with TestClient(app) as http:
        for path in ("/console", "/console/signin", "/console/w/default/models", "/console/static/console.js"):
            assert http.get(path, follow_redirects=False).status_code == 404, path
        assert http.post("/console/signin", data={"api_key": "x"}).status_code == 404
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "cdn" not in docs.text and "https://" not in docs.text
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', docs.text):
            assert http.get(asset).status_code == 200, asset


def test_docs_load_only_local_assets(client: Modelyard) -> None:
    http = _console(client)
    docs = http.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', docs.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert http.get(asset, headers={"Authorization": ""}).status_code == 200, asset
    assert http.get("/console/_docs/LICENSE").status_code == 200


def test_in_process_calls_stream_the_body_as_it_is_produced(app: FastAPI, client: Modelyard) -> None:
    release = asyncio.Event()

    async def slow() -> StreamingResponse:
        async def body():
            yield b"first"
            await release.wait()
            yield b"second"
        return StreamingResponse(body())

    app.add_api_route("/health/slow-test", slow)

    async def scenario() -> list[bytes]:
        from starlette.requests import Request

        scope = {"type": "http", "method": "GET", "path": "/console", "headers": [(b"host", b"testserver")],
                 "query_string": b"", "app": app, "client": ("127.0.0.1", 1), "server": ("testserver", 80),
                 "scheme": "http"}
        caller = ApiCaller(Request(scope), admin_key(app.state.settings))
        response = await caller.open("GET", "/health/slow-test")
        got = []
        chunks = response.chunks()
        got.append(await asyncio.wait_for(chunks.__anext__(), timeout=5))  # before the body is complete
        release.set()
        got += [chunk async for chunk in chunks]
        return got

    http: TestClient = client._http  # type: ignore[assignment]
    assert http.portal is not None  # the app's own event loop (started by the fixture)
    assert http.portal.call(scenario) == [b"first", b"second"]


def test_what_users_wrote_is_escaped(app: FastAPI, client: Modelyard) -> None:
    client.filesets.create("default", name="marked", description="<script>alert('x')</script>")
    http = sign_in(_console(client), admin_key(app.state.settings))
    page = http.get("/console/w/default/filesets").text
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert http.get("/console/w/default/filesets").headers["content-security-policy"].startswith("default-src 'self'")


def test_usage_charts_are_drawn_per_model() -> None:
    from modelyard.console.views import usage_charts

    rows = [{"model": m, "start": f"2026-12-01T10:0{i}:00Z", "requests": i + 1, "errors": i % 2,
             "prompt_tokens": 10 * i, "completion_tokens": 5 * i, "latency_ms": {"p50": 10.0 * i, "p95": None}}
            for m in ("base", "pirate") for i in range(3)]
    charts = usage_charts(rows)
    assert [c["model"] for c in charts] == ["base", "pirate"]
    assert charts[0]["requests"] == 6 and charts[0]["errors"] == 1 and charts[0]["tokens"] == 45
    titles = [title for title, _ in charts[0]["svgs"]]
    assert titles == ["Requests and errors", "Tokens", "Latency (ms)"]
    assert all(svg.startswith("<svg") and "<polyline" in svg for _, svg in charts[0]["svgs"])
    assert usage_charts([]) == []


def test_with_authentication_off_the_console_needs_no_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'open.db'}", auth="off")
    app = create_app(settings)
    mount_console(app)
    with TestClient(app) as http:
        page = http.get("/console/signin")
        assert "MODELYARD_AUTH=off" in page.text
        sign_in(http, "")
        assert ">default<" in http.get("/console/workspaces").text
        token = csrf_of(http.get("/console/w/default/filesets").text)
        assert http.post("/console/w/default/filesets", data={"name": "x"}).status_code == 403  # CSRF still on
        made = http.post("/console/w/default/filesets", data={"name": "open-files", "csrf_token": token},
                         follow_redirects=False)
        assert made.status_code == 303


def test_a_revoked_key_ends_the_session(app: FastAPI, client: Modelyard) -> None:
    made = client.access_keys.create(principal="rita@example.com", workspace="default")
    http = sign_in(_console(client), made.token)
    assert http.get("/console/w/default/models").status_code == 200
    client.access_keys.revoke(made.jti)
    answer = http.get("/console/w/default/models", follow_redirects=False)
    assert answer.status_code == 303 and "ended=1" in answer.headers["location"]
    assert SESSION_COOKIE not in http.cookies
    assert "no longer accepted" in http.get(answer.headers["location"]).text
