"""Typed resources over httpx: ``client.workspaces``, ``client.models``, ``client.adapters``,
``client.endpoints`` (with ``client.endpoints.adapters``), ``client.chat``, and for identity
``client.access_keys``, ``client.members``, ``client.secrets`` and ``client.auth``; ``client.usage``
(client/usage.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, Self, TypeVar, overload

import httpx
from pydantic import BaseModel, ConfigDict

from modelyard.adapters.schemas import Adapter
from modelyard.client.credentials import load_api_key
from modelyard.client.errors import APIConnectionError, StreamError, error_for
from modelyard.client.types_auth import (
    AccessKey,
    AccessKeyCreated,
    AccessKeyList,
    AccessKeyRevoked,
    AccessKeyStatus,
    Deleted,
    Member,
    MemberList,
    Secret,
    SecretValue,
    WhoAmI,
)
from modelyard.client.usage import Usage
from modelyard.endpoints.schemas import (
    AdapterRemoved,
    AttachedAdapterList,
    Endpoint,
    EndpointList,
    HardwareList,
)
from modelyard.filesets.schemas import FileEntry, FileList, Fileset
from modelyard.models.schemas import ModelEntity
from modelyard.workspaces.schemas import Workspace

T = TypeVar("T", bound=BaseModel)
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class Pagination(BaseModel):
    """Where a page of a list stands (the server's ``pagination`` object; defined here so that the SDK
    does not import the server's listing module, which needs FastAPI)."""

    model_config = ConfigDict(extra="allow")

    page: int
    page_size: int
    current_page_size: int
    total_pages: int
    total_results: int


@dataclass
class SyncPage(Generic[T]):
    """One page of a list, able to fetch the ones after it."""

    data: list[T]
    pagination: Pagination
    sort: str
    filter: dict[str, Any]
    _next: Callable[[int], SyncPage[T]] | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def has_next_page(self) -> bool:
        return self.pagination.page < self.pagination.total_pages

    def next_page(self) -> SyncPage[T]:
        if self._next is None or not self.has_next_page():
            raise StopIteration("no more pages")
        return self._next(self.pagination.page + 1)

    def auto_paging_iter(self) -> Iterator[T]:
        page: SyncPage[T] = self
        while True:
            yield from page.data
            if not page.has_next_page():
                return
            page = page.next_page()


def _list_params(
    page: int | None, page_size: int | None, sort: str | None, filters: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``filters={"name": "x", "created_at": {"$gte": "2024-01-01"}, "name": {"$in": [...]}}``."""
    params: dict[str, Any] = {}
    if page is not None:
        params["page"] = page
    if page_size is not None:
        params["page_size"] = page_size
    if sort is not None:
        params["sort"] = sort
    for field, condition in (filters or {}).items():
        ops = condition if isinstance(condition, Mapping) else {None: condition}
        for op, value in ops.items():
            key = f"filter[{field}]" if op is None else f"filter[{field}][{op}]"
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, list | tuple):
                value = ",".join(str(v) for v in value)
            params[key] = value
    return params


_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class Modelyard:
    """Client for a Modelyard server. Pass ``http_client`` to reuse a pool or to talk to an app in-process."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        """``api_key``: the argument, else ``MODELYARD_API_KEY``, else the credentials file under
        ``MODELYARD_HOME`` (the entry saved for this URL by ``modelyard login``, else the default one the
        server wrote on its first start). None of them: requests go without a key (a server with auth
        off). The key is sent as ``Authorization: Bearer`` on every request."""
        self.base_url = (base_url or os.environ.get("MODELYARD_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._key_given = api_key is not None
        if api_key is None:
            api_key = os.environ.get("MODELYARD_API_KEY") or None
        if api_key is None:
            api_key = load_api_key(self.base_url)
        self.api_key = api_key or None
        # a pool of its own carries the key too, so raw requests on ``client._http`` are authenticated
        own_headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        self._http = http_client or httpx.Client(timeout=timeout, headers=own_headers)
        self.max_retries = max_retries
        self.workspaces = Workspaces(self)
        self.models = Models(self)
        self.adapters = Adapters(self)
        self.endpoints = Endpoints(self)
        self.filesets = Filesets(self)
        self.chat = Chat(self)
        self.access_keys = AccessKeys(self)
        self.members = Members(self)
        self.secrets = Secrets(self)
        self.auth = Auth(self)
        self.usage = Usage(self)

    def __repr__(self) -> str:  # never the key
        return f"Modelyard(base_url={self.base_url!r}, api_key={'***' if self.api_key else None})"

    def _headers(self, headers: Any = None) -> httpx.Headers:
        """The request's headers with the key added (on the request, never on a shared client's defaults).
        An ``Authorization`` passed with the request wins; so does one set on a given ``http_client``
        over a key found in the environment or the credentials file (not over ``api_key=``)."""
        merged = httpx.Headers(headers)
        if not self.api_key or "authorization" in merged:
            return merged
        if not self._key_given and "authorization" in self._http.headers:
            return merged
        merged["Authorization"] = f"Bearer {self.api_key}"
        return merged

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise the error class of the status for 4xx/5xx.

        A read-only request (GET, HEAD, OPTIONS) whose connection fails (refused, reset, or closed by
        the server without an answer, as when a kept-alive connection is reused just as the server
        closes it) is sent again up to ``max_retries`` times, as the OpenAI SDK does. Timeouts are
        not retried, and neither is anything that may have changed state."""
        kwargs["headers"] = self._headers(kwargs.get("headers"))
        attempt = 0
        while True:
            try:
                response = self._http.request(method, self.base_url + path, **kwargs)
                break
            except httpx.TimeoutException as exc:
                raise APIConnectionError(f"cannot reach {self.base_url}: {exc}") from exc
            except httpx.TransportError as exc:
                if method.upper() not in _SAFE_METHODS or attempt >= self.max_retries:
                    raise APIConnectionError(f"cannot reach {self.base_url}: {exc}") from exc
                attempt += 1
                time.sleep(0.2 * 2 ** (attempt - 1))
        if response.status_code >= 400:
            raise error_for(response)
        return response

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """Send a request and hand over its response unread, for a body that arrives over time.
        Errors as in ``request``; a connection lost while reading is an ``APIConnectionError`` too."""
        kwargs["headers"] = self._headers(kwargs.get("headers"))
        try:
            with self._http.stream(method, self.base_url + path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                yield response
        except httpx.TransportError as exc:
            raise APIConnectionError(f"cannot reach {self.base_url}: {exc}") from exc

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health").json()

    def _page(self, path: str, item: type[T], params: dict[str, Any]) -> SyncPage[T]:
        body = self.request("GET", path, params=params).json()

        def fetch(page: int) -> SyncPage[T]:
            return self._page(path, item, {**params, "page": page})

        return SyncPage(
            data=[item.model_validate(d) for d in body["data"]],
            pagination=Pagination.model_validate(body["pagination"]),
            sort=body["sort"],
            filter=body.get("filter") or {},  # absent (or null) when no filter was applied
            _next=fetch,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Resource:
    def __init__(self, client: Modelyard) -> None:
        self._client = client


class Workspaces(_Resource):
    _path = "/apis/entities/v2/workspaces"

    def create(self, name: str, /, **fields: Any) -> Workspace:
        body = self._client.request("POST", self._path, json={"name": name, **fields}).json()
        return Workspace.model_validate(body)

    def retrieve(self, name: str) -> Workspace:
        return Workspace.model_validate(self._client.request("GET", f"{self._path}/{name}").json())

    def list(
        self, *, page: int | None = None, page_size: int | None = None, sort: str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> SyncPage[Workspace]:
        return self._client._page(self._path, Workspace, _list_params(page, page_size, sort, filters))

    def delete(self, name: str) -> None:
        self._client.request("DELETE", f"{self._path}/{name}")


def _models_path(workspace: str) -> str:
    return f"/apis/models/v2/workspaces/{workspace}"


class Models(_Resource):
    def create(self, workspace: str, /, **fields: Any) -> ModelEntity:
        body = self._client.request("POST", f"{_models_path(workspace)}/models", json=fields).json()
        return ModelEntity.model_validate(body)

    def retrieve(self, workspace: str, name: str, *, verbose: bool = False) -> ModelEntity:
        params = {"verbose": "true"} if verbose else None
        body = self._client.request("GET", f"{_models_path(workspace)}/models/{name}", params=params).json()
        return ModelEntity.model_validate(body)

    def list(
        self, workspace: str = "-", *, page: int | None = None, page_size: int | None = None,
        sort: str | None = None, filters: Mapping[str, Any] | None = None, verbose: bool = False,
    ) -> SyncPage[ModelEntity]:
        params = _list_params(page, page_size, sort, filters)
        if verbose:
            params["verbose"] = "true"
        return self._client._page(f"{_models_path(workspace)}/models", ModelEntity, params)

    def update(self, workspace: str, name: str, /, **fields: Any) -> ModelEntity:
        """Merge ``fields`` into the model; pass ``None`` to clear one."""
        body = self._client.request("PATCH", f"{_models_path(workspace)}/models/{name}", json=fields).json()
        return ModelEntity.model_validate(body)

    def delete(self, workspace: str, name: str) -> None:
        self._client.request("DELETE", f"{_models_path(workspace)}/models/{name}")


class Adapters(_Resource):
    def create(self, workspace: str, /, *, model: str, **fields: Any) -> Adapter:
        """Create an adapter; ``model`` is ``name`` (in ``workspace``) or ``ws/name``."""
        body = {"model": model, **fields}
        return Adapter.model_validate(
            self._client.request("POST", f"{_models_path(workspace)}/adapters", json=body).json()
        )

    def create_for_model(self, workspace: str, model_name: str, /, **fields: Any) -> Adapter:
        """The nested route: the base model is ``workspace/model_name``."""
        path = f"{_models_path(workspace)}/models/{model_name}/adapters"
        return Adapter.model_validate(self._client.request("POST", path, json=fields).json())

    def retrieve(self, workspace: str, name: str) -> Adapter:
        return Adapter.model_validate(self._client.request("GET", f"{_models_path(workspace)}/adapters/{name}").json())

    def list(
        self, workspace: str = "-", *, page: int | None = None, page_size: int | None = None,
        sort: str | None = None, filters: Mapping[str, Any] | None = None,
    ) -> SyncPage[Adapter]:
        params = _list_params(page, page_size, sort, filters)
        return self._client._page(f"{_models_path(workspace)}/adapters", Adapter, params)

    def update(
        self, workspace: str, name: str, /, *, model_name: str | None = None, **fields: Any
    ) -> Adapter:
        return Adapter.model_validate(
            self._client.request("PATCH", self._item(workspace, name, model_name), json=fields).json()
        )

    def delete(self, workspace: str, name: str, *, model_name: str | None = None) -> None:
        self._client.request("DELETE", self._item(workspace, name, model_name))

    @staticmethod
    def _item(workspace: str, name: str, model_name: str | None) -> str:
        if model_name is None:
            return f"{_models_path(workspace)}/adapters/{name}"
        return f"{_models_path(workspace)}/models/{model_name}/adapters/{name}"


class EndpointAdapters(_Resource):
    """Attach, list and detach adapters on an endpoint (``model_id`` = ``<endpoint_name>:<adapter>``)."""

    def add(self, endpoint_id: str, /, *, model_id: str) -> str:
        body = self._client.request("POST", f"/v1/endpoints/{endpoint_id}/adapters", json={"model_id": model_id})
        return str(body.json()["model_id"])

    def list(self, endpoint_id: str, /) -> AttachedAdapterList:
        return AttachedAdapterList.model_validate(
            self._client.request("GET", f"/v1/endpoints/{endpoint_id}/adapters").json()
        )

    def remove(self, endpoint_id: str, /, *, model_id: str) -> AdapterRemoved:
        response = self._client.request("DELETE", f"/v1/endpoints/{endpoint_id}/adapters", json={"model_id": model_id})
        return AdapterRemoved.model_validate(response.json())


class Endpoints(_Resource):
    """Endpoints serving one base model with LoRA adapters attached at run time (Together's format)."""

    def __init__(self, client: Modelyard) -> None:
        super().__init__(client)
        self.adapters = EndpointAdapters(client)

    def create(self, *, model: str, hardware: str = "cpu", min_replicas: int = 1, max_replicas: int = 1,
               **fields: Any) -> Endpoint:
        body = {"model": model, "hardware": hardware,
                "autoscaling": {"min_replicas": min_replicas, "max_replicas": max_replicas}, **fields}
        return Endpoint.model_validate(self._client.request("POST", "/v1/endpoints", json=body).json())

    def list(self, *, type: str | None = None, mine: bool | None = None) -> EndpointList:
        params = {k: v for k, v in (("type", type), ("mine", mine)) if v is not None}
        return EndpointList.model_validate(self._client.request("GET", "/v1/endpoints", params=params).json())

    def retrieve(self, endpoint_id: str, /) -> Endpoint:
        return Endpoint.model_validate(self._client.request("GET", f"/v1/endpoints/{endpoint_id}").json())

    def update(self, endpoint_id: str, /, **fields: Any) -> Endpoint:
        return Endpoint.model_validate(
            self._client.request("PATCH", f"/v1/endpoints/{endpoint_id}", json=fields).json()
        )

    def delete(self, endpoint_id: str, /) -> None:
        self._client.request("DELETE", f"/v1/endpoints/{endpoint_id}")

    def hardware(self) -> HardwareList:
        return HardwareList.model_validate(self._client.request("GET", "/v1/hardware").json())

    def logs(self, endpoint_id: str, /, *, tail: int = 100, replica: int | None = None,
             offset: int | None = None) -> EndpointLog:
        """The last ``tail`` lines of a replica's engine log: the newest running replica's by default (or
        the one written last when none runs). To follow it, pass the answer's ``replica`` and ``offset``
        to the next call, which then returns only what was written since."""
        params: dict[str, Any] = {"tail": tail}
        if replica is not None:
            params["replica"] = replica
        if offset is not None:
            params["offset"] = offset
        response = self._client.request("GET", f"/v1/endpoints/{endpoint_id}/logs", params=params)
        headers = response.headers
        return EndpointLog(
            text=response.text,
            replica=int(headers["x-modelyard-replica"]) if headers.get("x-modelyard-replica") else None,
            replicas=[int(n) for n in headers.get("x-modelyard-replicas", "").split(",") if n],
            offset=int(headers.get("x-modelyard-log-offset", "0")),
        )


@dataclass
class EndpointLog:
    """Lines of one replica's engine log (``replica`` is None while the endpoint has none)."""

    text: str
    replica: int | None
    replicas: list[int]
    """Every replica of the endpoint with a log."""
    offset: int
    """Where the next read of this replica's log starts (pass it as ``offset``)."""

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


def _workspace_header(workspace: str | None) -> dict[str, str]:
    return {"X-Modelyard-Workspace": workspace} if workspace else {}


class Chat(_Resource):
    """A minimal OpenAI-style chat call through the gateway (use the ``openai`` SDK for everything else).
    ``workspace`` is the caller's workspace, in which adapter names resolve (``default`` when omitted)."""

    @overload
    def create(self, *, model: str, messages: list[dict[str, Any]], stream: Literal[False] = False,
               workspace: str | None = None, **params: Any) -> dict[str, Any]: ...

    @overload
    def create(self, *, model: str, messages: list[dict[str, Any]], stream: Literal[True],
               workspace: str | None = None, **params: Any) -> Iterator[dict[str, Any]]: ...

    def create(self, *, model: str, messages: list[dict[str, Any]], stream: bool = False,
               workspace: str | None = None, **params: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """The whole answer, or with ``stream=True`` the chunks of ``stream()``."""
        if stream:
            return self.stream(model=model, messages=messages, workspace=workspace, **params)
        body = {"model": model, "messages": messages, **params}
        return self._client.request("POST", "/v1/chat/completions", json=body,
                                    headers=_workspace_header(workspace)).json()

    def stream(self, *, model: str, messages: list[dict[str, Any]], workspace: str | None = None,
               **params: Any) -> Generator[dict[str, Any], None, None]:
        """Yield the answer's chunks as the engine produces them (``chunk["choices"][0]["delta"]``).
        An error the server reports mid-stream raises ``StreamError``; stopping early closes the request."""
        body = {"model": model, "messages": messages, **params, "stream": True}
        with self._client.stream("POST", "/v1/chat/completions", json=body,
                                 headers=_workspace_header(workspace)) as response:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, keep-alives
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                error = chunk.get("error") if isinstance(chunk, dict) else None
                if error is not None:
                    message = error.get("message") if isinstance(error, dict) else error
                    raise StreamError(str(message), code=error.get("code") if isinstance(error, dict) else None)
                yield chunk


class _Unset:
    """An argument left out (where None means something: clear the field)."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class AccessKeys(_Resource):
    """API keys (JWTs the server signs): create one (its token is shown only then), list, revoke,
    suspend and unsuspend."""

    _path = "/apis/auth/v2/access-keys"

    def create(
        self, *, name: str | None = None, description: str | None = None, expires_in_seconds: int | None = None,
        workspace: str | None = None, scopes: list[str] | None = None, principal: str | None = None,
        service_account_id: str | None = None,
    ) -> AccessKeyCreated:
        """A key for yourself, or (an admin) for ``principal`` / a service account. ``scopes`` narrow it
        (``models:read``, ``files:write``, ...); ``workspace`` is its default workspace."""
        body = _without_none(name=name, description=description, expires_in_seconds=expires_in_seconds,
                             workspace=workspace, scopes=scopes, principal=principal,
                             service_account_id=service_account_id)
        return AccessKeyCreated.model_validate(self._client.request("POST", self._path, json=body).json())

    def list(self, *, page: int | None = None, page_size: int | None = None) -> AccessKeyList:
        """One page of keys, newest first (``has_more`` says whether another follows)."""
        params = _without_none(page=page, page_size=page_size)
        return AccessKeyList.model_validate(self._client.request("GET", self._path, params=params).json())

    def list_all(self) -> Iterator[AccessKey]:
        """Every key, page after page."""
        page = 1
        while True:
            listed = self.list(page=page)
            yield from listed.data
            if not listed.has_more or not listed.data:
                return
            page += 1

    def revoke(self, jti: str, /) -> AccessKeyRevoked:
        return AccessKeyRevoked.model_validate(self._client.request("DELETE", f"{self._path}/{jti}").json())

    def suspend(self, jti: str, /) -> AccessKeyStatus:
        return AccessKeyStatus.model_validate(self._client.request("POST", f"{self._path}/{jti}/suspend").json())

    def unsuspend(self, jti: str, /) -> AccessKeyStatus:
        return AccessKeyStatus.model_validate(self._client.request("POST", f"{self._path}/{jti}/unsuspend").json())


def _members_path(workspace: str) -> str:
    return f"/apis/entities/v2/workspaces/{workspace}/members"


class Members(_Resource):
    """Who holds which roles (Viewer, Editor, Admin) in a workspace."""

    def list(self, workspace: str, /) -> MemberList:
        return MemberList.model_validate(self._client.request("GET", _members_path(workspace)).json())

    def add(self, workspace: str, principal: str, /, roles: list[str] | None = None) -> Member:
        body = {"principal": principal, "roles": list(roles) if roles is not None else ["Editor"]}
        return Member.model_validate(self._client.request("POST", _members_path(workspace), json=body).json())

    def update(self, workspace: str, principal: str, /, roles: list[str]) -> Member:
        """Replace the principal's roles in the workspace with ``roles``."""
        path = f"{_members_path(workspace)}/{principal}"
        return Member.model_validate(self._client.request("PUT", path, json={"roles": list(roles)}).json())

    def remove(self, workspace: str, principal: str, /) -> Deleted:
        path = f"{_members_path(workspace)}/{principal}"
        return Deleted.model_validate(self._client.request("DELETE", path).json())


def _secrets_path(workspace: str) -> str:
    return f"/apis/secrets/v2/workspaces/{workspace}/secrets"


class Secrets(_Resource):
    """Workspace secrets, encrypted at rest: every call returns metadata, only ``access`` the value."""

    def create(self, workspace: str, name: str, /, value: str, description: str | None = None) -> Secret:
        body = _without_none(name=name, value=value, description=description)
        return Secret.model_validate(self._client.request("POST", _secrets_path(workspace), json=body).json())

    def list(
        self, workspace: str, /, *, page: int | None = None, page_size: int | None = None, sort: str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> SyncPage[Secret]:
        return self._client._page(_secrets_path(workspace), Secret, _list_params(page, page_size, sort, filters))

    def retrieve(self, workspace: str, name: str, /) -> Secret:
        return Secret.model_validate(self._client.request("GET", f"{_secrets_path(workspace)}/{name}").json())

    def update(self, workspace: str, name: str, /, value: str | None = None,
               description: str | None | _Unset = _UNSET) -> Secret:
        """Change the value, the description, or both: what is left out is kept; ``description=None``
        clears it."""
        body: dict[str, Any] = _without_none(value=value)
        if not isinstance(description, _Unset):
            body["description"] = description
        path = f"{_secrets_path(workspace)}/{name}"
        return Secret.model_validate(self._client.request("PATCH", path, json=body).json())

    def delete(self, workspace: str, name: str, /) -> None:
        self._client.request("DELETE", f"{_secrets_path(workspace)}/{name}")

    def access(self, workspace: str, name: str, /) -> SecretValue:
        """The decrypted value."""
        path = f"{_secrets_path(workspace)}/{name}/access"
        return SecretValue.model_validate(self._client.request("GET", path).json())


class Auth(_Resource):
    def whoami(self) -> WhoAmI:
        """Who the server takes this client's key to be."""
        return WhoAmI.model_validate(self._client.request("GET", "/apis/auth/authenticate").json())


def _files_path(workspace: str) -> str:
    return f"/apis/files/v2/workspaces/{workspace}/filesets"


class Filesets(_Resource):
    """Filesets and their files; uploads stream from disk with a sha256 the server checks."""

    def create(self, workspace: str, /, *, name: str, **fields: Any) -> Fileset:
        body = {"name": name, **fields}
        return Fileset.model_validate(self._client.request("POST", _files_path(workspace), json=body).json())

    def retrieve(self, workspace: str, name: str) -> Fileset:
        return Fileset.model_validate(self._client.request("GET", f"{_files_path(workspace)}/{name}").json())

    def list(
        self, workspace: str = "-", *, page: int | None = None, page_size: int | None = None,
        sort: str | None = None, filters: Mapping[str, Any] | None = None,
    ) -> SyncPage[Fileset]:
        return self._client._page(_files_path(workspace), Fileset, _list_params(page, page_size, sort, filters))

    def update(self, workspace: str, name: str, /, **fields: Any) -> Fileset:
        return Fileset.model_validate(
            self._client.request("PATCH", f"{_files_path(workspace)}/{name}", json=fields).json()
        )

    def delete(self, workspace: str, name: str) -> Fileset:
        return Fileset.model_validate(self._client.request("DELETE", f"{_files_path(workspace)}/{name}").json())

    def list_files(self, workspace: str, name: str, *, path: str | None = None) -> FileList:
        params = {"path": path} if path else {}
        url = f"{_files_path(workspace)}/{name}/files"
        return FileList.model_validate(self._client.request("GET", url, params=params).json())

    def upload_file(
        self, workspace: str, name: str, path: str, source: str | os.PathLike[str] | bytes, /, *,
        sha256: str | None = None, progress: Callable[[int], None] | None = None,
    ) -> FileEntry:
        """Upload one file, streamed from disk (or ``bytes``), announcing its sha256 so the server
        refuses a body that arrives corrupted. ``progress`` is called with each chunk's size."""
        if isinstance(source, bytes):
            digest = sha256 or hashlib.sha256(source).hexdigest()
            content: Any = source
        else:
            digest = sha256 or file_sha256(source)
            content = _chunks(source, progress)
        headers = {"X-Checksum-Sha256": digest, "Content-Type": "application/octet-stream"}
        if not isinstance(source, bytes):
            headers["Content-Length"] = str(os.path.getsize(source))
        url = f"{_files_path(workspace)}/{name}/-/{path}"
        return FileEntry.model_validate(self._client.request("PUT", url, content=content, headers=headers).json())

    def delete_file(self, workspace: str, name: str, path: str) -> FileEntry:
        """Delete one file of the fileset; returns the deleted file (the server answers 200 with it)."""
        url = f"{_files_path(workspace)}/{name}/-/{path}"
        return FileEntry.model_validate(self._client.request("DELETE", url).json())

    def download_file(self, workspace: str, name: str, path: str, target: str | os.PathLike[str], /, *,
                      progress: Callable[[int], None] | None = None) -> None:
        """Download to ``target``, resuming with ``Range`` from ``target + '.part'`` if an earlier
        download was interrupted; the file appears under its name only when complete."""
        target = os.fspath(target)
        part = target + ".part"
        have = os.path.getsize(part) if os.path.exists(part) else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        url = self._client.base_url + f"{_files_path(workspace)}/{name}/-/{path}"
        with self._client._http.stream("GET", url, headers=self._client._headers(headers)) as response:
            if response.status_code == 416:  # the part file already holds everything
                response.read()
            elif response.status_code >= 400:
                response.read()
                raise error_for(response)
            else:
                mode = "ab" if response.status_code == 206 else "wb"
                if progress and have and mode == "ab":
                    progress(have)
                with open(part, mode) as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        if progress:
                            progress(len(chunk))
        os.replace(part, target)


@dataclass
class SyncReport:
    """What an upload or download of a directory did."""

    transferred: list[str]
    skipped: list[str]
    bytes: int


def local_files(folder: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(relative POSIX path, absolute path)`` of every file under ``folder``, hidden ones included."""
    root = Path(folder)
    return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())


def upload_dir(
    client: Modelyard, folder: str | os.PathLike[str], workspace: str, name: str, *,
    retries: int = 3, on_start: Callable[[int], None] | None = None, progress: Callable[[int], None] | None = None,
) -> SyncReport:
    """Upload every file of ``folder`` to fileset ``workspace/name`` (created if needed). Files whose
    sha256 already matches the server's are skipped; a failed file is retried ``retries`` times.
    ``on_start`` gets the total bytes to send, ``progress`` each chunk's size."""
    from modelyard.client.errors import ConflictError, InternalServerError

    try:
        client.filesets.create(workspace, name=name)
    except ConflictError:
        pass
    remote = {f.path: f.sha256 for f in client.filesets.list_files(workspace, name).data}
    plan, skipped = [], []
    for rel, path in local_files(folder):
        digest = file_sha256(path)
        (skipped if remote.get(rel) == digest else plan).append((rel, path, digest))
    skipped = [rel for rel, _, _ in skipped]
    total = sum(path.stat().st_size for _, path, _ in plan)
    if on_start:
        on_start(total)
    for rel, path, digest in plan:
        for attempt in range(retries + 1):
            sent = 0

            def count(n: int) -> None:
                nonlocal sent
                sent += n
                if progress:
                    progress(n)

            try:
                client.filesets.upload_file(workspace, name, rel, path, sha256=digest, progress=count)
                break
            except (APIConnectionError, httpx.TransportError, InternalServerError):  # worth another try
                if progress and sent:
                    progress(-sent)  # this file starts again
                if attempt == retries:
                    raise
                time.sleep(min(2**attempt, 10))
    return SyncReport(transferred=[rel for rel, _, _ in plan], skipped=skipped, bytes=total)


def download_dir(
    client: Modelyard, workspace: str, name: str, folder: str | os.PathLike[str], *,
    on_start: Callable[[int], None] | None = None, progress: Callable[[int], None] | None = None,
) -> SyncReport:
    """Download every file of fileset ``workspace/name`` into ``folder``, skipping files already there
    with the right sha256 and resuming partial ones (``.part``) with ``Range``."""
    root = Path(folder)
    files = client.filesets.list_files(workspace, name).data
    plan, skipped = [], []
    for item in files:
        target = root / item.path
        if target.is_file() and target.stat().st_size == item.size and file_sha256(target) == item.sha256:
            skipped.append(item.path)
        else:
            plan.append(item)
    if on_start:
        on_start(sum(i.size for i in plan))
    for item in plan:
        target = root / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        client.filesets.download_file(workspace, name, item.path, target, progress=progress)
        if file_sha256(target) != item.sha256:
            target.unlink()
            raise APIConnectionError(f"{item.path}: downloaded bytes do not match the server's sha256; try again")
    return SyncReport(transferred=[i.path for i in plan], skipped=skipped, bytes=sum(i.size for i in plan))


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(path: str | os.PathLike[str], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            if progress:
                progress(len(block))
            yield block
