"""FastAPI's view of the caller: ``AccessDep`` is the :class:`~modelyard.auth.principal.Access` the
authentication middleware (:mod:`modelyard.auth.middleware`) attached to the request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelyard.auth.principal import Access


def current_access(request: Request) -> Access:
    access = getattr(request.state, "access", None)
    if access is None:  # the middleware always sets it; a route reached without it is a wiring bug
        raise RuntimeError("no Access on the request: is modelyard.auth.middleware installed?")
    return access


AccessDep = Annotated[Access, Depends(current_access)]
