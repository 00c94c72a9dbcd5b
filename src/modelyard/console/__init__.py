"""The web console at ``/console``: server-rendered pages over the app's own API, called in-process as
the signed-in visitor (see :mod:`modelyard.console.router`), and the offline ``/docs``
(:mod:`modelyard.console.docs`). ``MODELYARD_CONSOLE=off`` leaves the console unmounted (404)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from modelyard.console.docs import mount_offline_docs

STATIC = Path(__file__).parent / "static"


def mount_console(app: FastAPI) -> None:
    """Add the console's routes and assets to ``app`` unless ``Settings.console`` is ``off``."""
    settings = getattr(app.state, "settings", None)
    if settings is not None and getattr(settings, "console", "on") == "off":
        return
    if getattr(app.state, "console_mounted", False):  # once per app
        return
    app.state.console_mounted = True
    from modelyard.console.router import SignIn, _NotVisible, _render, read_session, router
    from modelyard.console.session import clear_session

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    async def signin_first(request: Request, exc: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        ended = "&ended=1" if getattr(exc, "reason", None) else ""
        response = RedirectResponse(f"/console/signin?next={quote(target, safe='')}{ended}", status_code=303)
        if ended:
            clear_session(request, response)
        return response

    async def not_visible(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _NotVisible)
        return _render(request, "error.html", read_session(request), status_code=exc.response.status,
                       ws=None, workspaces=[], error=exc.response.message)

    app.add_exception_handler(SignIn, signin_first)
    app.add_exception_handler(_NotVisible, not_visible)


__all__ = ["mount_console", "mount_offline_docs"]
