"""FastAPI's view of the caller: ``AccessDep`` is the :class:`~modelyard.auth.principal.Access` the
authentication middleware (:mod:`modelyard.auth.middleware`) attached to the request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from modelyard.auth.principal import Access


async def current_access(request: Request) -> Access:
    access = getattr(request.state, "access", None)
    if access is None:  # the middleware always sets it; a route reached without it is a wiring bug
        raise RuntimeError("no Access on the request: is modelyard.auth.middleware installed?")
    return access


AccessDep = Annotated[Access, Depends(current_access)]


async def caller_workspace(
    request: Request,
    workspace: Annotated[str | None, Header(
        alias="X-Modelyard-Workspace",
        description="the workspace to act in; default: the access key's default workspace, else 'default'",
    )] = None,
) -> str:
    """The workspace OpenAI- and Together-style routes act in, as the middleware resolved it (the
    header, else the key's default workspace, else ``default``) and checked the caller's role there."""
    return getattr(request.state, "workspace", None) or workspace or "default"


CallerWorkspace = Annotated[str, Depends(caller_workspace)]
