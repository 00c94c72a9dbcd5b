"""FastAPI's interactive docs (``/docs``) served offline: Swagger UI's script and stylesheet are
vendored from the ``swagger-ui-dist`` npm package (``static/vendor/swagger-ui``, with its licence) and
served by this process, instead of the CDN FastAPI points at by default.

The assets live under ``/console/_docs/``, a prefix the authentication middleware leaves public (as
``/docs`` itself is), and they are served whether or not the console is on.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "static" / "vendor" / "swagger-ui"
PREFIX = "/console/_docs"


def mount_offline_docs(app: FastAPI) -> None:
    """Replace the app's ``/docs`` page with one that loads Swagger UI from this server."""
    if getattr(app.state, "offline_docs_mounted", False):  # once per app
        return
    app.state.offline_docs_mounted = True
    docs_url = app.docs_url or "/docs"
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != docs_url]
    app.mount(PREFIX, StaticFiles(directory=ASSETS), name="swagger-ui-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    title = f"{app.title} - API docs"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=title,
            swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js", swagger_css_url=f"{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/favicon-32x32.png", oauth2_redirect_url=oauth2_redirect_url,
            init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters,
        )

    app.add_api_route(docs_url, swagger_ui, methods=["GET"], include_in_schema=False)
