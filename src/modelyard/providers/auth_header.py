"""How a provider's API key is sent: its ``auth_header_format``, a Jinja2 template rendered in a sandbox.

The template renders to ``Header-Name: value`` or, without a header name, to the value of
``Authorization``. The key is the variable ``auth_secret`` (the reference's name; ``secret`` is
accepted too). A template is checked when the provider is created or replaced, by rendering it
with a stand-in key, so a broken one is a 400 then and never a failure at request time.
"""

from __future__ import annotations

import re
from functools import lru_cache

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

DEFAULT_FORMAT = "Authorization: Bearer {{ auth_secret }}"
_VARIABLES = frozenset({"auth_secret", "secret"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class AuthHeaderError(ValueError):
    """The template cannot make a header."""


@lru_cache(maxsize=256)
def _compile(template: str):  # type: ignore[no-untyped-def]
    try:
        parsed = _ENV.parse(template)
    except TemplateError as exc:
        raise AuthHeaderError(f"auth_header_format is not a valid Jinja2 template: {exc}") from None
    names = meta.find_undeclared_variables(parsed)
    unknown = sorted(names - _VARIABLES)
    if unknown:
        raise AuthHeaderError(f"auth_header_format may use only {{{{ auth_secret }}}}; it names {unknown}")
    if not names:
        raise AuthHeaderError("auth_header_format must contain {{ auth_secret }} (the API key)")
    return _ENV.from_string(template)


def render(template: str | None, secret: str) -> tuple[str, str]:
    """``(header name, value)`` for ``secret``; :class:`AuthHeaderError` when the template fails."""
    compiled = _compile(template or DEFAULT_FORMAT)
    try:
        text = compiled.render(auth_secret=secret, secret=secret)
    except Exception as exc:  # noqa: BLE001 - a sandbox refusal or any runtime failure of the template
        raise AuthHeaderError(f"auth_header_format does not render: {type(exc).__name__}") from None
    name, sep, value = text.partition(":")
    if sep and _HEADER_NAME.fullmatch(name.strip()):
        name, value = name.strip(), value.strip()
    else:
        name, value = "Authorization", text.strip()
    if not value or any(c in value for c in "\r\n\0"):
        raise AuthHeaderError("auth_header_format renders to an empty header value or one with line breaks")
    return name, value


def check(template: str | None) -> None:
    """Refuse (``AuthHeaderError``) a template that would not render a header for a real key."""
    if template is not None:
        render(template, "sk-check-0123456789")
