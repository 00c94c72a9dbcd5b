"""Replay the reference's recorded exchanges (``tests/transcripts/nmp-0.6.0-transcripts.md``, copied
from the project's shared spec) for workspaces, filesets, models and adapters, in order, against our
app, and compare each answer with the recorded one: status code, key sets and values.

Values that differ by nature between two runs are normalised on both sides before comparing: ids
(``<kind>-<base58>``), timestamps, the caller's principal (auth is off on the recording, on here),
where a fileset's local storage lives on disk, and the descriptions of the built-in workspaces. A 422
is compared by the ``loc`` of each error (our messages state the name rule in words on purpose).

Exchanges that depend on a bug of the reference that we fixed, or on a feature we lack, are skipped;
each is listed in ``SKIPPED`` with its reason. Print the tally with ``python -m tests.test_transcripts``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRANSCRIPT = Path(__file__).parent / "transcripts" / "nmp-0.6.0-transcripts.md"

# the ``##`` sections about the entities this replay covers; the gateway's are another subject
SECTIONS = (
    "Workspaces (entities service)",
    "Filesets (files service)",
    "Models (models service)",
    "Adapters (nested route)",
    "Adapters (workspace-level route)",
    "Model listing",
    "Deletes",
)

SKIPPED = {
    "List models filter[adapters]=true":
        "reference bug: it returns the models without adapters; ours returns the ones that have some",
    "List models filter JSON":
        "feature we lack: a whole filter as JSON in ?filter=; we take filter[field]=value (400 otherwise)",
}

# keys whose value is not compared in one exchange (the key itself must still be there or not, unless
# it is dropped as a null list member); each a known, deliberate difference
_SPEC = ("we derive the spec from the fileset's config.json when the model is created; the reference's "
         "background job that would do it failed in the recording (no executor), so its spec is null")
IGNORED = {
    "Create model with fileset (triggers model-spec job)": {"spec": _SPEC},
    "Get model verbose": {"spec": _SPEC},
    "List models": {"spec": _SPEC},
    "List models in all workspaces (-)": {"spec": _SPEC},
    "List adapters filter[model]":
        {"filter": "we echo the filters applied as {field: value}; the reference as {$and: [{field: {$eq: v}}]}"},
    "List adapters bad filter field":
        {"detail": "the message lists our filter fields; adapters have no entity_type or project to filter on"},
    "Delete fileset referenced by model":
        {"detail": "our 409 names the models and adapters that use the fileset; the reference only counts them"},
}

# the ``ws/fs#path`` file entry: ``sha256`` is our addition (resumable downloads, skipped re-uploads)
EXTENSION_KEYS = {"file": {"sha256"}}

_ID = re.compile(r"^(workspace|model|fileset|adapter)-[1-9A-HJ-NP-Za-km-z]{16,32}$")
_TIMESTAMPS = {"created_at", "updated_at"}
_BUILT_IN = {"default", "system"}


@dataclass
class Exchange:
    section: str
    title: str
    method: str
    path: str
    body: Any = None
    raw_size: int | None = None
    status: int = 0
    response: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> list[Exchange]:
    """Every ``###`` exchange of the transcript, in recorded order."""
    exchanges: list[Exchange] = []
    section = ""
    for block in re.split(r"^(?=##+ )", text, flags=re.MULTILINE):
        heading = block.split("\n", 1)[0]
        if heading.startswith("## "):
            section = heading[3:].strip()
            continue
        if not heading.startswith("### "):
            continue
        request = re.search(r"^`(GET|POST|PUT|PATCH|DELETE|HEAD) ([^`\s]+)`\s*$", block, re.MULTILINE)
        status = re.search(r"^Response: \*\*(\d{3})\*\*(.*)$", block, re.MULTILINE)
        if request is None or status is None:
            continue
        ex = Exchange(section, heading[4:].strip(), request.group(1), request.group(2), status=int(status.group(1)))
        before, after = block[: status.start()], block[status.end():]
        body = re.search(r"^Request body:\s*```json\n(.*?)```", before, re.MULTILINE | re.DOTALL)
        if body:
            ex.body = json.loads(body.group(1))
        raw = re.search(r"^Request body: raw bytes \((\d+) bytes\)", before, re.MULTILINE)
        if raw:
            ex.raw_size = int(raw.group(1))
        answer = re.match(r"\s*```json\n(.*?)```", after, re.DOTALL)
        if answer:
            content = answer.group(1).strip()
            ex.response = None if content == "<empty>" else json.loads(content)
        inline = re.search(r"headers\(etag/len\)=(\{.*?\})", status.group(2))
        if inline:
            ex.headers = json.loads(inline.group(1).replace("'", '"'))
        exchanges.append(ex)
    return exchanges


def in_scope(exchanges: list[Exchange]) -> list[Exchange]:
    return [ex for ex in exchanges if ex.section in SECTIONS]


def raw_body(ex: Exchange) -> bytes:
    """Bytes of the recorded size: a small llama ``config.json`` for the base checkpoint (the
    recording shows its start), anything for the adapter's nested file (not read as a PEFT config)."""
    if ex.path.endswith("config.json") and "adapter" not in ex.path:
        head = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256}
        data = json.dumps(head).encode()
    else:
        data = b'{"note": "adapter files"}'
    assert ex.raw_size is not None and len(data) <= ex.raw_size
    return data + b" " * (ex.raw_size - len(data))


def normalise(value: Any, principal: str, key: str | None = None, parent: dict[str, Any] | None = None) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k == "storage" and isinstance(v, dict):
                out[k] = {"type": v.get("type")}  # where the files live on disk is the server's own business
            elif k in EXTENSION_KEYS["file"] and "file_ref" in value:
                continue
            elif k == "description" and value.get("name") in _BUILT_IN and str(value.get("id", "")).startswith("workspace-"):
                out[k] = "<built-in>"
            else:
                out[k] = normalise(v, principal, k, value)
        return out
    if isinstance(value, list):
        return [normalise(v, principal, key, parent) for v in value]
    if isinstance(value, str):
        if key in _TIMESTAMPS:
            return "<timestamp>"
        if key in ("created_by", "updated_by") and value == principal:
            return ""  # the recording ran with auth off: the caller's principal is empty there
        match = _ID.match(value)
        if match:
            return f"<{match.group(1)}-id>"
    return value


def answer_of(status: int, body: Any, principal: str, ignored: dict[str, str] | None = None) -> Any:
    """What is compared of an answer: the ``loc`` of each validation error, otherwise the whole body,
    less the values of ``ignored`` keys (at the top and in list items)."""
    if status == 422 and isinstance(body, dict) and isinstance(body.get("detail"), list):
        return {"detail": [{"loc": item.get("loc")} for item in body["detail"]]}
    body = normalise(body, principal)
    if ignored and isinstance(body, dict):
        for target in [body, *(body.get("data") or [])]:
            for key in ignored:
                if isinstance(target, dict):
                    target.pop(key, None)
    return body


def replay(http: Any, principal: str, exchanges: list[Exchange]) -> tuple[list[str], list[str]]:
    """Send each exchange in order; return (titles that matched, descriptions of the differences)."""
    matched: list[str] = []
    problems: list[str] = []
    for ex in exchanges:
        if ex.title in SKIPPED:
            # still sent: later exchanges rely on the state it leaves
            http.request(ex.method, ex.path, json=ex.body) if ex.body is not None else http.request(ex.method, ex.path)
            continue
        if ex.raw_size is not None:
            got = http.request(ex.method, ex.path, content=raw_body(ex),
                               headers={"Content-Type": "application/octet-stream"})
        elif ex.body is not None:
            got = http.request(ex.method, ex.path, json=ex.body)
        else:
            got = http.request(ex.method, ex.path)
        differences: list[str] = []
        if got.status_code != ex.status:
            differences.append(f"status {got.status_code} != {ex.status}")
        if ex.headers:
            for name, value in ex.headers.items():
                if got.headers.get(name) != value:
                    differences.append(f"header {name}: {got.headers.get(name)!r} != {value!r}")
        elif ex.response is None:
            if got.content:
                differences.append(f"body {got.text[:200]!r} where the reference sends none")
        else:
            try:
                ours = answer_of(got.status_code, got.json(), principal, IGNORED.get(ex.title))
            except ValueError:
                ours = got.text[:200]
            theirs = answer_of(ex.status, ex.response, principal, IGNORED.get(ex.title))
            if ours != theirs:
                differences.append(describe(ours, theirs))
        if differences:
            problems.append(f"{ex.title} ({ex.method} {ex.path}): " + "; ".join(differences))
        else:
            matched.append(ex.title)
    return matched, problems


def describe(ours: Any, theirs: Any, where: str = "") -> str:
    """The first few places two JSON values differ."""
    out: list[str] = []

    def walk(a: Any, b: Any, at: str) -> None:
        if len(out) >= 6:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            if missing := sorted(set(b) - set(a)):
                out.append(f"{at or '.'} lacks {missing}")
            if extra := sorted(set(a) - set(b)):
                out.append(f"{at or '.'} has extra {extra}")
            for k in sorted(set(a) & set(b)):
                walk(a[k], b[k], f"{at}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{at}[{i}]")
        elif a != b:
            out.append(f"{at or '.'}: {json.dumps(a)[:160]} != {json.dumps(b)[:160]}")

    walk(ours, theirs, where)
    return "; ".join(out)


def _principal(http: Any) -> str:
    """The principal of the key ``http`` sends (the ``sub`` of its JWT)."""
    token = http.headers["Authorization"].removeprefix("Bearer ")
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def test_recorded_exchanges_match(client: Any) -> None:
    exchanges = in_scope(parse(TRANSCRIPT.read_text()))
    assert len(exchanges) >= 70, "the transcript's entity sections did not parse"
    matched, problems = replay(client._http, _principal(client._http), exchanges)
    assert not problems, f"{len(matched)}/{len(exchanges) - len(SKIPPED)} match; differences:\n" + "\n".join(problems)


if __name__ == "__main__":  # the tally, against a fresh app on a temporary SQLite database
    import tempfile

    from fastapi.testclient import TestClient

    from modelyard.app import create_app
    from modelyard.config import Settings
    from tests.conftest import admin_key

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), database_url=f"sqlite:///{home}/db.sqlite")
        with TestClient(create_app(settings)) as http:
            http.headers["Authorization"] = f"Bearer {admin_key(settings)}"
            all_exchanges = parse(TRANSCRIPT.read_text())
            scoped = in_scope(all_exchanges)
            good, bad = replay(http, _principal(http), scoped)
    print("\n".join(bad))
    print(f"transcript: {len(all_exchanges)} exchanges, {len(scoped)} about entities, {len(SKIPPED)} skipped, "
          f"{len(good)} match, {len(bad)} differ")
