"""Which S3 endpoints and buckets a fileset may name.

The server talks to a fileset's storage with its own credentials, so a fileset may only point where the
operator allows: an endpoint is allowed when it is ``MODELYARD_S3_ENDPOINT_URL`` (the one used by a
fileset that names none) or listed in ``MODELYARD_S3_ALLOWED_ENDPOINTS``; a bucket when
``MODELYARD_S3_ALLOWED_BUCKETS`` lists it (or holds ``*``), or, with that setting unset, when it is on
the configured endpoint. Endpoints are compared as normalised URLs (scheme, lowercase host, port with
its default filled in, path without a trailing slash); a URL with a user name or password, another
scheme than http(s), a query or a fragment is refused. :func:`check_storage` makes no network request:
call it before the storage is opened.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from modelyard.config import Settings
from modelyard.errors import InvalidRequest, clip

DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's naming rules (also keeps hosts sane)
_REGION = re.compile(r"[a-z0-9-]{1,40}")
ENDPOINTS = "MODELYARD_S3_ALLOWED_ENDPOINTS"
BUCKETS = "MODELYARD_S3_ALLOWED_BUCKETS"


def normalise_endpoint(url: str) -> str:
    """``scheme://host:port/path`` for comparison; ValueError (saying why) for a URL that is refused."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in url):
        raise ValueError("contains whitespace, a control character or a backslash")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError("must not carry a user name or password (user@host)")
    if "?" in url or "#" in url:
        raise ValueError("must not have a query or a fragment")
    host = parts.hostname or ""
    if host.startswith("[") or ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host.strip('[]'))}]"
        except ValueError:
            raise ValueError("has an invalid IPv6 address") from None
    elif not _HOST.fullmatch(host):
        raise ValueError("has no host or an invalid one")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}{parts.path.rstrip('/')}"


def _normalised(url: str | None) -> str | None:
    try:
        return normalise_endpoint(url) if url else None
    except ValueError:
        return None  # an operator's malformed entry allows nothing


def allowed_endpoints(settings: Settings) -> set[str]:
    """The normalised endpoints a fileset may name: the configured one and those listed."""
    urls = [settings.s3_endpoint_url, *settings.s3_allowed_endpoints]
    return {n for n in map(_normalised, urls) if n}


def check_storage(settings: Settings, storage: dict[str, Any] | None) -> None:
    """400, naming the setting to change, when ``storage`` (a fileset's, as stored) points at an S3
    endpoint or bucket the operator does not allow. Local storage always passes."""
    storage = storage or {"type": "local"}
    if storage.get("type", "local") == "local":
        return
    endpoint = storage.get("endpoint_url")
    configured = _normalised(settings.s3_endpoint_url)
    on_configured, normal = True, configured  # a fileset that names no endpoint uses the configured one
    if endpoint:
        try:
            normal = normalise_endpoint(endpoint)
        except ValueError as exc:
            raise InvalidRequest(f"S3 endpoint_url is refused: it {exc}") from None  # not echoed: it may hold a password
        if normal not in allowed_endpoints(settings):
            raise InvalidRequest(f"S3 endpoint_url {clip(normal)!r} is not allowed on this server; leave it out "
                                 f"to use the configured endpoint, or ask the operator to add it to {ENDPOINTS}")
        on_configured = normal == configured
    region = storage.get("region")
    if region and not _REGION.fullmatch(region):
        raise InvalidRequest(f"S3 region {clip(region)!r} is not a region name (lowercase letters, digits, '-')")
    bucket = str(storage.get("bucket") or "")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidRequest(f"S3 bucket {clip(bucket)!r} is not a valid bucket name "
                             "(3-63 lowercase letters, digits, '.' and '-')")
    allowed = settings.s3_allowed_buckets
    if allowed:
        if "*" not in allowed and bucket not in allowed:
            raise InvalidRequest(f"S3 bucket {bucket!r} is not allowed on this server; ask the operator to add it "
                                 f"to {BUCKETS}")
    elif not on_configured:
        raise InvalidRequest(f"S3 bucket {bucket!r} on endpoint {clip(normal)!r} is not allowed: buckets on an "
                             f"endpoint other than MODELYARD_S3_ENDPOINT_URL must be listed in {BUCKETS} ('*' for any)")
