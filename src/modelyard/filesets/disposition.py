"""Headers that keep a browser from rendering a downloaded file as a page of this server's origin."""

from __future__ import annotations

from urllib.parse import quote


def content_disposition(path: str) -> str:
    """``attachment`` with the file's base name (RFC 6266): ``filename="..."`` when it is plain ASCII,
    else an ASCII stand-in plus ``filename*=UTF-8''<percent-encoded>``."""
    name = path.rsplit("/", 1)[-1]
    plain = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    if plain == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def download_headers(path: str) -> dict[str, str]:
    """Sent with every answer carrying a file's bytes (GET, ranged GET and HEAD)."""
    return {"X-Content-Type-Options": "nosniff", "Content-Disposition": content_disposition(path)}
