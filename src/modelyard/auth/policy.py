"""What each route needs, in one table: the scope group it belongs to and the role it needs in the
workspace it acts on. The authentication middleware applies it to every request before any route
runs, so no route can forget it; services add the checks only they can make (a base model or an
adapter in another workspace, what a ``-`` list may show).

Roles follow the reference: reading and running inference needs Viewer, changing needs Editor,
members and deleting a workspace need Admin. Scopes: ``<group>:read`` for GET/HEAD, ``<group>:write``
otherwise (``platform:read``/``platform:write`` cover every group). Inference is ``inference:read``
to list models and ``inference:write`` to call one, as on the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PUBLIC = frozenset({"/health", "/apis/auth/jwks", "/apis/auth/discovery", "/docs", "/docs/oauth2-redirect",
                    "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/console",)
"""The web console signs its visitors in itself (an http-only session cookie holding their key) and
calls the API in-process as them, so every check below still applies to what it shows and does."""


def is_public(path: str) -> bool:
    return path in PUBLIC or path == "/console" or path.startswith("/console/")

_SERVICE_GROUP = {"models": "models", "files": "files", "secrets": "secrets", "inference-gateway": "inference",
                  "entities": "iam"}
_WORKSPACED = re.compile(r"^/apis/(?P<service>[a-z-]+)/v2/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)?$")
_INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/messages", "/v1/embeddings")


@dataclass(frozen=True)
class Requirement:
    group: str | None
    """Scope group (``models``, ``files``, ``inference``, ``endpoints``, ``secrets``, ``iam``, ``audit``);
    ``None``: no scope narrows it (access keys, whoami)."""
    write: bool
    workspace: str | None = None
    """The workspace the request acts on (``None``: none, or ``-``: across the caller's workspaces)."""
    role: str | None = None
    """The role needed there (``None``: any authenticated principal)."""
    action: str = "this request"
    caller_workspace: bool = False
    """The workspace came from ``X-Modelyard-Workspace`` or the key's default (``/v1`` routes)."""


def _write(method: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS")


def requirement(method: str, path: str, caller_workspace: str, trusted: frozenset[str] = frozenset()) -> Requirement:
    """What ``method path`` needs; ``caller_workspace`` is the workspace ``/v1`` routes act in.
    ``trusted``: workspaces whose filesets may carry remote code, so only their Admins write files."""
    write = _write(method)
    match = _WORKSPACED.match(path)
    if match:
        service, ws, rest = match["service"], match["ws"], match["rest"] or ""
        group = _SERVICE_GROUP.get(service)
        if ws == "-":
            return Requirement(group, write, "-", None if not write else "Editor", "list across workspaces")
        if service == "entities":
            if rest.startswith("/members"):
                return Requirement("iam", write, ws, "Admin" if write else "Viewer",
                                   "managing members" if write else "listing members")
            return Requirement("iam", write, ws, "Admin" if write else "Viewer",
                               "deleting a workspace" if write else "reading a workspace")
        if service == "secrets" and rest.endswith("/access"):
            return Requirement("secrets", False, ws, "Editor", "reading a secret's value")
        if service == "files" and write and ws in trusted:
            return Requirement("files", True, ws, "Admin", "changing files in a trusted workspace")
        if service == "inference-gateway":
            return Requirement("inference", write, ws, "Viewer", "running inference")
        return Requirement(group, write, ws, "Editor" if write else "Viewer",
                           f"{'changing' if write else 'reading'} {service}")
    if path == "/apis/entities/v2/workspaces":
        return Requirement("iam", write, None, None, "creating a workspace" if write else "listing workspaces")
    if path.startswith(("/v1/endpoints", "/v1/hardware")):
        return Requirement("endpoints", write, caller_workspace, "Editor" if write else "Viewer",
                           "changing endpoints" if write else "reading endpoints", caller_workspace=True)
    if path == "/v1/usage":
        return Requirement("inference", False, caller_workspace, "Viewer", "reading usage", caller_workspace=True)
    if path in _INFERENCE or path.startswith("/v1/models/"):
        return Requirement("inference", write, caller_workspace, "Viewer", "running inference", caller_workspace=True)
    if path.startswith(("/apis/auth/v2/access-keys", "/apis/auth/authenticate")):
        return Requirement(None, write)
    if path.startswith("/apis/auth/v2/audit"):
        return Requirement("audit", write)
    if path.startswith(("/apis/auth/", "/apis/secrets/")):
        return Requirement("iam" if path.startswith("/apis/auth/") else "secrets", write)
    return Requirement(None, write)
