"""The console's pages and actions under ``/console``.

Every page is rendered on the server from the API's own answers, fetched in-process with the
visitor's key (:mod:`modelyard.console.inprocess`): a key sees in the console exactly what it may see
through the API, and a refused action shows the API's message. Lists are paged (``PAGE_SIZE``), so a
workspace with thousands of models renders as fast as one with ten.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from modelyard.console import views
from modelyard.console.inprocess import ApiCaller, ApiResponse, error_message
from modelyard.console.session import (
    COOKIE_PATH,
    CSRF_FIELD,
    CSRF_HEADER,
    Session,
    clear_session,
    csrf_ok,
    presession_ok,
    presession_token,
    read_session,
    set_presession,
    write_session,
)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(count=views.human_count, size=views.human_bytes, when=views.short_time)


def _page_url(request: Request, page: int) -> str:
    """This page's URL showing list page ``page`` (its other query parameters kept)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "page"] + [("page", str(page))]
    return f"{request.url.path}?{urlencode(params)}"


templates.env.globals["page_url"] = _page_url

PAGE_SIZE = 25
FLASH_COOKIE = "modelyard_console_flash"
MAX_TARGETS = 4

router = APIRouter(prefix="/console", include_in_schema=False)


# -- helpers -------------------------------------------------------------------------------------------

class SignIn(Exception):
    """The visitor has no session, or its key is no longer accepted: send them to the sign-in page."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


def _session(request: Request) -> Session:
    session = read_session(request)
    if session is None:
        raise SignIn()
    return session


def _api(request: Request, session: Session) -> ApiCaller:
    return ApiCaller(request, session.key)


def _ws_headers(ws: str) -> dict[str, str]:
    return {"x-modelyard-workspace": ws}


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _flash(request: Request) -> dict[str, Any]:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(raw.encode()))
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


def _back(request: Request, url: str, *, error: str | None = None, notice: str | None = None,
          target: str | None = None) -> RedirectResponse:
    """303 to ``url`` carrying a one-time message (the API's own, on a refusal) shown next to ``target``."""
    response = RedirectResponse(url, status_code=303)
    if error or notice:
        payload = {"error": (error or "")[:1200] or None, "notice": (notice or "")[:300] or None, "target": target}
        value = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
        response.set_cookie(FLASH_COOKIE, value, max_age=60, path=COOKIE_PATH, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
    return response


def _render(request: Request, template: str, session: Session | None, status_code: int = 200,
            **context: Any) -> HTMLResponse:
    flash = _flash(request)
    response = templates.TemplateResponse(request, template, {
        "session": session, "csrf": session.csrf if session else "", "flash": flash, **context,
    }, status_code=status_code)
    if flash:
        response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    return response


MAX_FORM_BYTES = 64 * 1024


async def _fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the console's forms send nothing else; parsed
    here rather than with python-multipart, which the server does not otherwise need)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def _form(request: Request, session: Session) -> dict[str, str] | None:
    """The POSTed form if its CSRF token is this session's; ``None`` otherwise."""
    data = await _fields(request)
    token = data.pop(CSRF_FIELD, None) or request.headers.get(CSRF_HEADER)
    return data if csrf_ok(session, token) else None


def _csrf_refused() -> HTMLResponse:
    return HTMLResponse("<p>This form has expired or did not come from the console (CSRF check failed). "
                        "<a href='/console'>Reload the console</a> and try again.</p>", status_code=403)


def _page_of(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def _listing(resp: ApiResponse) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if not resp.ok:
        return [], {}
    body = resp.json() or {}
    return body.get("data") or [], body.get("pagination") or {}


async def _workspaces(api: ApiCaller) -> list[str]:
    resp = await api.get("/apis/entities/v2/workspaces", query={"page_size": 100, "sort": "name"})
    if resp.status == 401:  # revoked, suspended or expired since sign-in: the session ends
        raise SignIn(resp.message)
    items, _ = _listing(resp)
    return [w["name"] for w in items]


async def _shell(request: Request, ws: str | None = None) -> tuple[Session, ApiCaller, dict[str, Any]]:
    session = _session(request)
    api = _api(request, session)
    names = await _workspaces(api)
    if ws is not None and ws not in names:  # the API says whether it exists for this key (404 otherwise)
        check = await api.get(f"/apis/entities/v2/workspaces/{_q(ws)}")
        if not check.ok:
            raise _NotVisible(ws, check)
        names.append(ws)
    return session, api, {"workspaces": names, "ws": ws}


class _NotVisible(Exception):
    def __init__(self, ws: str, response: ApiResponse) -> None:
        self.ws, self.response = ws, response


# -- sign-in -------------------------------------------------------------------------------------------

@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    session = read_session(request)
    if session is None:
        return RedirectResponse("/console/signin", status_code=303)
    ws = session.default_workspace or "default"
    return RedirectResponse(f"/console/w/{_q(ws)}/endpoints", status_code=303)


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request) -> Response:
    ended = request.query_params.get("ended")
    return _signin(request, "Your session ended: the key is no longer accepted. Sign in again." if ended else None)


def _auth_on(request: Request) -> bool:
    authority = getattr(request.app.state, "authority", None)
    return authority is None or bool(authority.enabled)


def _signin(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    token, fresh = presession_token(request)
    response = _render(request, "signin.html", None, status_code=status_code, error=error, signin_token=token,
                       auth_off=not _auth_on(request),
                       next=request.query_params.get("next", ""))
    if fresh:
        set_presession(request, response, fresh)
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await _fields(request)
    key = str(form.get("api_key") or "").strip()
    if not presession_ok(request, str(form.get(CSRF_FIELD) or "")):
        return _signin(request, "This sign-in form has expired; try again.", 403)
    if not key and not _auth_on(request):  # MODELYARD_AUTH=off: no keys; a random one keys the CSRF tokens
        key = "local-" + secrets.token_urlsafe(24)
    if not key:
        return _signin(request, "Paste an access key to sign in.", 400)
    api = ApiCaller(request, key)
    resp = await api.get("/apis/auth/authenticate")
    if not resp.ok:
        return _signin(request, f"The key was refused: {resp.message}", 401 if resp.status == 401 else resp.status)
    who = resp.json() or {}
    target = str(form.get("next") or "")
    if not target.startswith("/console/") or target.startswith("//"):
        target = f"/console/w/{_q(who.get('default_workspace') or 'default')}/endpoints"
    response = RedirectResponse(target, status_code=303)
    write_session(request, response, key, str(who.get("principal") or "?"), who.get("default_workspace"))
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    session = read_session(request)
    if session is not None and await _form(request, session) is None:
        return _csrf_refused()
    response = RedirectResponse("/console/signin", status_code=303)
    clear_session(request, response)
    return response


# -- workspaces ----------------------------------------------------------------------------------------

@router.get("/workspaces", response_class=HTMLResponse)
async def workspaces_page(request: Request) -> Response:
    session = _session(request)
    if request.query_params.get("ws"):  # the workspace picker without script
        return RedirectResponse(f"/console/w/{_q(request.query_params['ws'])}/endpoints", status_code=303)
    api = _api(request, session)
    resp = await api.get("/apis/entities/v2/workspaces", query={"page_size": 100, "page": _page_of(request),
                                                                 "sort": "name"})
    if resp.status == 401:
        raise SignIn(resp.message)
    items, pagination = _listing(resp)
    return _render(request, "workspaces.html", session, items=items, pagination=pagination,
                   workspaces=[w["name"] for w in items], ws=None, error=None if resp.ok else resp.message)


@router.post("/workspaces")
async def create_workspace(request: Request) -> Response:
    session = _session(request)
    form = await _form(request, session)
    if form is None:
        return _csrf_refused()
    name = form.get("name", "").strip()
    resp = await _api(request, session).call("POST", "/apis/entities/v2/workspaces",
                                             json_body={"name": name, "description": form.get("description") or None})
    if not resp.ok:
        return _back(request, "/console/workspaces", error=resp.message, target="create")
    return _back(request, f"/console/w/{_q(name)}/models", notice=f"Workspace {name} created.")


# -- models ---------------------------------------------------------------------------------------------

@router.get("/w/{ws}/models", response_class=HTMLResponse)
async def models_page(request: Request, ws: str) -> Response:
    session, api, shell = await _shell(request, ws)
    page = _page_of(request)
    query: dict[str, Any] = {"page": page, "page_size": PAGE_SIZE, "sort": "-created_at"}
    search = request.query_params.get("q", "").strip()
    if search:
        query["filter[name][$like]"] = search
    resp, filesets_resp = await asyncio.gather(
        api.get(f"/apis/models/v2/workspaces/{_q(ws)}/models", query=query),
        api.get(f"/apis/files/v2/workspaces/{_q(ws)}/filesets", query={"page_size": 100}))
    items, pagination = _listing(resp)
    filesets, _ = _listing(filesets_resp)
    for item in items:
        item["_card"] = views.spec_card(item.get("spec"))
    return _render(request, "models.html", session, **shell, items=items, pagination=pagination, q=search,
                   filesets=filesets, error=None if resp.ok else resp.message)


@router.post("/w/{ws}/models")
async def create_model(request: Request, ws: str) -> Response:
    session = _session(request)
    form = await _form(request, session)
    if form is None:
        return _csrf_refused()
    body: dict[str, Any] = {"name": form.get("name", "").strip()}
    for field in ("fileset", "description"):
        if form.get(field, "").strip():
            body[field] = form[field].strip()
    resp = await _api(request, session).call("POST", f"/apis/models/v2/workspaces/{_q(ws)}/models", json_body=body)
    url = f"/console/w/{_q(ws)}/models"
    if not resp.ok:
        return _back(request, url, error=resp.message, target="create")
    return _back(request, url, notice=f"Model {body['name']} registered.")


# -- adapters -------------------------------------------------------------------------------------------

async def _endpoints(api: ApiCaller, ws: str) -> tuple[list[dict[str, Any]], ApiResponse]:
    resp = await api.get("/v1/endpoints", headers=_ws_headers(ws))
    return ((resp.json() or {}).get("data") or [] if resp.ok else []), resp


@router.get("/w/{ws}/adapters", response_class=HTMLResponse)
async def adapters_page(request: Request, ws: str) -> Response:
    session, api, shell = await _shell(request, ws)
    query: dict[str, Any] = {"page": _page_of(request), "page_size": PAGE_SIZE, "sort": "-created_at"}
    if request.query_params.get("model"):
        query["filter[model]"] = request.query_params["model"]
    resp, (endpoints, _), models_resp, filesets_resp = await asyncio.gather(
        api.get(f"/apis/models/v2/workspaces/{_q(ws)}/adapters", query=query),
        _endpoints(api, ws),
        api.get(f"/apis/models/v2/workspaces/{_q(ws)}/models", query={"page_size": 100, "sort": "name"}),
        api.get(f"/apis/files/v2/workspaces/{_q(ws)}/filesets", query={"page_size": 100}))
    items, pagination = _listing(resp)
    models, filesets = _listing(models_resp)[0], _listing(filesets_resp)[0]
    for item in items:
        rank = (item.get("lora_config") or {}).get("rank")
        fits, too_small = [], []
        for ep in endpoints:
            if ep.get("model") != item.get("model"):
                continue
            (fits if rank is None or rank <= ep.get("max_lora_rank", 0) else too_small).append(ep)
        item["_fits"], item["_too_small"] = fits, too_small
    return _render(request, "adapters.html", session, **shell, items=items, pagination=pagination,
                   models=models, filesets=filesets, error=None if resp.ok else resp.message)


@router.get("/w/{ws}/adapters/{name}", response_class=HTMLResponse)
async def adapter_page(request: Request, ws: str, name: str) -> Response:
    session, api, shell = await _shell(request, ws)
    resp = await api.get(f"/apis/models/v2/workspaces/{_q(ws)}/adapters/{_q(name)}")
    adapter = resp.json() if resp.ok else None
    config: dict[str, Any] | None = None
    if adapter and adapter.get("fileset"):
        fws, _, fname = str(adapter["fileset"]).rpartition("/")
        files = await api.get(f"/apis/files/v2/workspaces/{_q(fws or ws)}/filesets/{_q(fname)}/-/adapter_config.json")
        if files.ok:
            try:
                config = json.loads(files.body)
            except ValueError:
                config = None
    endpoints, _ = await _endpoints(api, ws)
    return _render(request, "adapter.html", session, **shell, adapter=adapter, config=config or {},
                   endpoints=[e for e in endpoints if adapter and e.get("model") == adapter.get("model")],
                   error=None if resp.ok else resp.message)


@router.post("/w/{ws}/adapters")
async def create_adapter(request: Request, ws: str) -> Response:
    session = _session(request)
    form = await _form(request, session)
    if form is None:
        return _csrf_refused()
    body: dict[str, Any] = {"name": form.get("name", "").strip(), "model": form.get("model", "").strip(),
                            "fileset": form.get("fileset", "").strip(),
                            "finetuning_type": form.get("finetuning_type") or "lora"}
    if form.get("description", "").strip():
        body["description"] = form["description"].strip()
    resp = await _api(request, session).call("POST", f"/apis/models/v2/workspaces/{_q(ws)}/adapters", json_body=body)
    url = f"/console/w/{_q(ws)}/adapters"
    if not resp.ok:
        return _back(request, url, error=resp.message, target="create")
    return _back(request, url, notice=f"Adapter {body['name']} registered.")


# -- filesets -------------------------------------------------------------------------------------------

@router.get("/w/{ws}/filesets", response_class=HTMLResponse)
async def filesets_page(request: Request, ws: str) -> Response:
    session, api, shell = await _shell(request, ws)
    resp = await api.get(f"/apis/files/v2/workspaces/{_q(ws)}/filesets",
                         query={"page": _page_of(request), "page_size": PAGE_SIZE})
    items, pagination = _listing(resp)
    return _render(request, "filesets.html", session, **shell, items=items, pagination=pagination,
                   error=None if resp.ok else resp.message)


@router.post("/w/{ws}/filesets")
async def create_fileset(request: Request, ws: str) -> Response:
    session = _session(request)
    form = await _form(request, session)
    if form is None:
        return _csrf_refused()
    name = form.get("name", "").strip()
    body: dict[str, Any] = {"name": name}
    if form.get("description", "").strip():
        body["description"] = form["description"].strip()
    resp = await _api(request, session).call("POST", f"/apis/files/v2/workspaces/{_q(ws)}/filesets", json_body=body)
    if not resp.ok:
        return _back(request, f"/console/w/{_q(ws)}/filesets", error=resp.message, target="create")
    return _back(request, f"/console/w/{_q(ws)}/filesets/{_q(name)}", notice=f"Fileset {name} created.")


@router.get("/w/{ws}/filesets/{name}", response_class=HTMLResponse)
async def fileset_page(request: Request, ws: str, name: str) -> Response:
    session, api, shell = await _shell(request, ws)
    resp = await api.get(f"/apis/files/v2/workspaces/{_q(ws)}/filesets/{_q(name)}")
    files_resp = await api.get(f"/apis/files/v2/workspaces/{_q(ws)}/filesets/{_q(name)}/files")
    files = (files_resp.json() or {}).get("data") or [] if files_resp.ok else []
    return _render(request, "fileset.html", session, **shell, fileset=resp.json() if resp.ok else None,
                   name=name, files=files, total=sum(int(f.get("size") or 0) for f in files),
                   error=None if resp.ok else resp.message)


async def _relay_body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


@router.put("/w/{ws}/filesets/{name}/-/{path:path}")
async def upload_file(request: Request, ws: str, name: str, path: str) -> Response:
    """The drag-and-drop upload: the browser's bytes are relayed to the API's file PUT as they arrive."""
    session = read_session(request)
    if session is None:
        return JSONResponse({"detail": "Your console session has ended: sign in again."}, status_code=401)
    if not csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return JSONResponse({"detail": "CSRF check failed: reload the page."}, status_code=403)
    headers = {"content-type": request.headers.get("content-type", "application/octet-stream")}
    if request.headers.get("content-length"):
        headers["content-length"] = request.headers["content-length"]
    api = _api(request, session)
    resp = await api.call("PUT", f"/apis/files/v2/workspaces/{_q(ws)}/filesets/{_q(name)}/-/{quote(path)}",
                          body=_relay_body(request), headers=headers)
    if not resp.ok:
        return JSONResponse({"detail": resp.message}, status_code=resp.status)
    return JSONResponse(resp.json(), status_code=resp.status)


@router.get("/w/{ws}/filesets/{name}/-/{path:path}")
async def download_file(request: Request, ws: str, name: str, path: str) -> Response:
    session = _session(request)
    api = _api(request, session)
    upstream = await api.open("GET", f"/apis/files/v2/workspaces/{_q(ws)}/filesets/{_q(name)}/-/{quote(path)}",
                              headers={"accept": "*/*"})
    if upstream.status >= 400:
        body = await upstream.read()
        return HTMLResponse(f"<p>Download refused: {_html(error_message(upstream.status, body))}</p>",
                            status_code=upstream.status)
    keep = {k: v for k, v in upstream.headers.items()
            if k in ("content-type", "content-length", "content-disposition", "etag", "last-modified")}
    keep.setdefault("content-disposition", f"attachment; filename=\"{Path(path).name}\"")
    return StreamingResponse(upstream.chunks(), status_code=upstream.status, headers=keep)


def _html(text: str) -> str:
    from html import escape

    return escape(text)


# -- endpoints -----------------------------------------------------------------------------------------

@router.get("/w/{ws}/endpoints", response_class=HTMLResponse)
async def endpoints_page(request: Request, ws: str) -> Response:
    session, api, shell = await _shell(request, ws)
    endpoints, resp = await _endpoints(api, ws)
    supervisor = getattr(request.app.state, "supervisor", None)

    async def details(ep: dict[str, Any]) -> None:
        pool = supervisor.pools.get(ep["id"]) if supervisor is not None else None
        ep["_in_flight"] = pool.stats()["in_flight"] if pool else 0
        attached, candidates = await asyncio.gather(
            api.get(f"/v1/endpoints/{_q(ep['id'])}/adapters", headers=_ws_headers(ws)),
            api.get(f"/apis/models/v2/workspaces/{_q(ws)}/adapters",
                    query={"filter[model]": ep.get("model"), "page_size": 100, "sort": "name"}))
        ep["_attached"] = (attached.json() or {}).get("data") or [] if attached.ok else []
        names = {a["adapter_name"] for a in ep["_attached"]}
        ep["_candidates"] = [a for a in _listing(candidates)[0] if a["name"] not in names]

    models_resp, hardware, *_ = await asyncio.gather(
        api.get(f"/apis/models/v2/workspaces/{_q(ws)}/models", query={"page_size": 100, "sort": "name"}),
        api.get("/v1/hardware", headers=_ws_headers(ws)),
        *(details(ep) for ep in endpoints))
    models, _ = _listing(models_resp)
    return _render(request, "endpoints.html", session, **shell, items=endpoints, models=models,
                   hardware=(hardware.json() or {}).get("data") or [] if hardware.ok else [{"id": "cpu"}],
                   error=None if resp.ok else resp.message)


@router.post("/w/{ws}/endpoints")
async def create_endpoint(request: Request, ws: str) -> Response:
    session = _session(request)
    form = await _form(request, session)
    if form is None:
        return _csrf_refused()
    url = f"/console/w/{_q(ws)}/endpoints"
    try:
        low, high = int(form.get("min_replicas") or 1), int(form.get("max_replicas") or 1)
    except ValueError:
        return _back(request, url, error="Replicas must be whole numbers.", target="create")
    model = form.get("model", "").strip()
    body: dict[str, Any] = {"model": model if "/" in model else f"{ws}/{model}",
                            "hardware": form.get("hardware") or "cpu",
                            "autoscaling": {"min_replicas": low, "max_replicas": high}}
    if form.get("display_name", "").strip():
        body["display_name"] = form["display_name"].strip()
    resp = await _api(request, session).call("POST", "/v1/endpoints", json_body=body, headers=_ws_headers(ws))
    if not resp.ok:
        return _back(request, url, error=resp.message, target="create")
    return _back(request, url, notice=f"Endpoint {resp.json().get('name')} created; it is starting.")


@router.post("/w/{ws}/endpoints/{endpoint_id}/{action}")
async def endpoint_action(request: Request, ws: str, endpoint_id: str, action: str) -> Response:
    session = _session(request)
    form = await _form(request, session)
    if form is None:
        return _csrf_refused()
    api = _api(request, session)
    url = f"/console/w/{_q(ws)}/endpoints#ep-{endpoint_id}"
    path = f"/v1/endpoints/{_q(endpoint_id)}"
    if action in ("start", "stop"):
        resp = await api.call("PATCH", path, json_body={"state": "STARTED" if action == "start" else "STOPPED"},
                              headers=_ws_headers(ws))
        notice = f"Endpoint {'starting' if action == 'start' else 'stopping'}."
    elif action in ("attach", "detach"):
        model_id = form.get("model_id", "").strip()
        resp = await api.call("POST" if action == "attach" else "DELETE", path + "/adapters",
                              json_body={"model_id": model_id}, headers=_ws_headers(ws))
        notice = f"{model_id} {'attached' if action == 'attach' else 'detached'}."
    elif action == "delete":
        resp = await api.call("DELETE", path, headers=_ws_headers(ws))
        notice = "Endpoint deleted."
    else:
        return HTMLResponse("<p>Unknown action.</p>", status_code=404)
    if not resp.ok:
        return _back(request, url, error=resp.message, target=endpoint_id)
    if action == "delete":
        return _back(request, f"/console/w/{_q(ws)}/endpoints", notice=notice)
    return _back(request, url, notice=notice, target=endpoint_id)


# -- playground ----------------------------------------------------------------------------------------

@router.get("/w/{ws}/playground", response_class=HTMLResponse)
async def playground_page(request: Request, ws: str) -> Response:
    session, api, shell = await _shell(request, ws)
    endpoints, resp = await _endpoints(api, ws)
    chosen = request.query_params.get("endpoint") or next(
        (e["id"] for e in endpoints if e.get("state") == "STARTED"), endpoints[0]["id"] if endpoints else None)
    current = next((e for e in endpoints if e["id"] == chosen), None)
    targets: list[str] = []
    if current is not None:
        targets.append(current["name"])
        attached = await api.get(f"/v1/endpoints/{_q(current['id'])}/adapters", headers=_ws_headers(ws))
        targets += [a["model_id"] for a in ((attached.json() or {}).get("data") or [] if attached.ok else [])]
    return _render(request, "playground.html", session, **shell, endpoints=endpoints, current=current,
                   targets=targets, max_targets=MAX_TARGETS, error=None if resp.ok else resp.message)


@router.post("/w/{ws}/playground/chat")
async def playground_chat(request: Request, ws: str) -> Response:
    """One playground column: the chat completion streamed from the gateway, relayed as it comes."""
    session = read_session(request)
    if session is None:
        return JSONResponse({"error": {"message": "Your console session has ended: sign in again."}}, status_code=401)
    if not csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return JSONResponse({"error": {"message": "CSRF check failed: reload the page."}}, status_code=403)
    try:
        given = await request.json()
    except ValueError:
        return JSONResponse({"error": {"message": "the body must be JSON"}}, status_code=400)
    if not isinstance(given, dict):
        return JSONResponse({"error": {"message": "the body must be a JSON object"}}, status_code=400)
    messages = []
    if str(given.get("system") or "").strip():
        messages.append({"role": "system", "content": str(given["system"])})
    messages.append({"role": "user", "content": str(given.get("prompt") or "")})
    body: dict[str, Any] = {"model": str(given.get("model") or ""), "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    for field, kind in (("temperature", float), ("max_tokens", int)):
        if given.get(field) not in (None, ""):
            try:
                body[field] = kind(given[field])
            except (TypeError, ValueError):
                return JSONResponse({"error": {"message": f"{field} must be a number"}}, status_code=400)
    api = _api(request, session)
    upstream = await api.open("POST", "/v1/chat/completions", json_body=body,
                              headers={**_ws_headers(ws), "accept": "text/event-stream"})
    if upstream.status >= 400:
        raw = await upstream.read()
        return JSONResponse({"error": {"message": error_message(upstream.status, raw)}}, status_code=upstream.status)
    return StreamingResponse(upstream.chunks(), status_code=upstream.status,
                             media_type=upstream.headers.get("content-type", "text/event-stream"),
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# -- usage ---------------------------------------------------------------------------------------------

@router.get("/w/{ws}/usage", response_class=HTMLResponse)
async def usage_page(request: Request, ws: str) -> Response:
    session, api, shell = await _shell(request, ws)
    params = request.query_params
    granularity = params.get("granularity") if params.get("granularity") in ("minute", "hour", "day") else "minute"
    span = {"minute": timedelta(hours=2), "hour": timedelta(days=2), "day": timedelta(days=30)}[granularity]
    now = datetime.now(UTC)
    query = {"granularity": granularity, "model": params.get("model") or None,
             "from": params.get("from") or (now - span).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "to": params.get("to") or None}
    resp = await api.get("/v1/usage", query=query, headers=_ws_headers(ws))
    rows: list[dict[str, Any]] = (resp.json() or {}).get("data") or [] if resp.ok else []
    unavailable = resp.status == 404 and not rows
    return _render(request, "usage.html", session, **shell, rows=rows, charts=views.usage_charts(rows),
                   granularity=granularity, model=params.get("model") or "", unavailable=unavailable,
                   error=None if resp.ok or unavailable else resp.message)
