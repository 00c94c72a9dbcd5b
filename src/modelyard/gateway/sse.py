"""OpenAI event streams as the gateway relays them: one set of rules for every relay (engine replicas
and registry models, both over the gateway's HTTP/1.1 client, and registry models reached over httpx).

Each line is passed on as it arrives, with the chunk's ``model`` set to the name the client used;
the stream's token usage and the time of its first token are counted on the way, and the call is finished
(counted in the metrics and usage records) as ``[DONE]`` passes, before the client sees it; the usage chunk the
gateway asked for on the client's behalf is dropped unless the client asked for it too; and a stream
that breaks ends with an error event of its own and ``[DONE]``, never a bare cut.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from modelyard.observability.metrics import GatewayCall

DONE = b"data: [DONE]"


def with_model(payload: bytes, model: str) -> bytes | None:
    """A JSON object's bytes with its top-level ``model`` set to ``model``; None if it is not an object
    (answered as it came). orjson: the parse and the write cost microseconds."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if "model" in value:
        value["model"] = model
    return orjson.dumps(value)


def error_event(body: dict[str, Any]) -> bytes:
    """An error event and ``[DONE]``, after a blank line: a cut between an event's ``data:`` line and
    its blank line must not glue the error onto that event."""
    return b"\ndata: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"


class EventWatch:
    """Watches one stream line by line (see the module docstring)."""

    def __init__(self, model: str | None, call: GatewayCall | None = None, *, pass_usage: bool = True,
                 status: int = 200) -> None:
        self.model = model
        self.call = call
        self.pass_usage = pass_usage
        self.status = status  # the upstream's, for the call's outcome
        self.done = False

    def line(self, line: bytes) -> bytes | None:
        """``line`` (with its newline) as it should be passed on, or None to drop it."""
        if not line.startswith(b"data: "):
            return line
        if line.startswith(b"data: {"):
            call = self.call
            if call is not None:
                if b'"usage"' in line:
                    with contextlib.suppress(ValueError, AttributeError):
                        chunk = orjson.loads(line[6:])
                        if chunk.get("usage"):
                            call.tokens(chunk["usage"])
                            if not chunk.get("choices") and not self.pass_usage:
                                return None
                elif call.first is None and b'"role"' not in line:
                    call.first_token()
            if self.model is not None:
                rewritten = with_model(line[6:].rstrip(b"\r\n"), self.model)
                if rewritten is not None:
                    return b"data: " + rewritten + b"\n"
        elif line.rstrip(b"\r\n ") == DONE:
            self.done = True
            if self.call is not None:  # the upstream may close its body a while later
                self.call.finish(self.status)
        return line
