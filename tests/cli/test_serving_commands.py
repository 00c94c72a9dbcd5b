"""CLI commands against a running endpoint: start and stop report the state they reach, the replica
log, and `chat` streaming its answer. These start built-in engine processes, so SQLite only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Modelyard
from modelyard.client.client import Chat
from modelyard.config import Settings
from tests.conftest import TRUSTED
from tests.endpoints.conftest import register

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
HELLO = {"role": "user", "content": "hello there"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'serving.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120)


def _row(output: str, endpoint_id: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.startswith(endpoint_id + " "))


def _answer(client: Modelyard, model: str, messages: list[dict[str, Any]]) -> str:
    reply = client.chat.create(model=model, messages=messages, max_tokens=8, temperature=0)
    return reply["choices"][0]["message"]["content"]


def test_start_logs_chat_and_stop(live_server: str, fixture_models: dict[str, Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = ["--url", live_server]
    client = Modelyard(live_server, timeout=120)
    register(client, fixture_models)
    endpoint = client.endpoints.create(model="default/tiny", state="STOPPED")
    client.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")

    started = runner.invoke(app, ["endpoints", "start", endpoint.id, *url], env=WIDE)
    assert started.exit_code == 0, started.output
    assert _row(started.output, endpoint.id)[2:4] == ["STARTED", "1"], started.output  # state, replicas

    logs = runner.invoke(app, ["endpoints", "logs", endpoint.id, "--tail", "5", *url])
    assert logs.exit_code == 0 and 0 < len(logs.stdout.splitlines()) <= 5, logs.output

    # one question: the streamed answer is the one the non-streamed call gives
    expected = _answer(client, "pirate", [HELLO])
    chunks = list(client.chat.stream(model="pirate", messages=[HELLO], max_tokens=8, temperature=0))
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == expected
    one = runner.invoke(app, ["chat", "pirate", "hello there", "--max-tokens", "8", "--temperature", "0", *url])
    assert one.exit_code == 0 and one.stdout == expected + "\n", one.output

    # a conversation: each turn sends what was said before
    sent: list[list[dict[str, Any]]] = []
    original = Chat.stream

    def recording(self: Chat, **kwargs: Any) -> Any:
        sent.append([dict(m) for m in kwargs["messages"]])
        return original(self, **kwargs)

    monkeypatch.setattr(Chat, "stream", recording)
    system = {"role": "system", "content": "You are brief."}
    repl = runner.invoke(app, ["chat", endpoint.name, "--system", system["content"], "--max-tokens", "8",
                               "--temperature", "0", *url], input="hello there\n/reset\nand then?\n")
    assert repl.exit_code == 0, repl.output
    first = _answer(client, endpoint.name, [system, HELLO])
    assert sent[0] == [system, HELLO] and first in repl.stdout
    assert sent[1] == [system, {"role": "user", "content": "and then?"}]  # /reset forgot the first turn
    assert _answer(client, endpoint.name, sent[1]) in repl.stdout

    stopped = runner.invoke(app, ["endpoints", "stop", endpoint.id, *url], env=WIDE)
    assert stopped.exit_code == 0, stopped.output
    assert _row(stopped.output, endpoint.id)[2:4] == ["STOPPED", "0"] and "STARTED" not in stopped.output
    assert runner.invoke(app, ["endpoints", "logs", endpoint.id, *url]).stdout, "the last replica's log stays readable"

    asked = runner.invoke(app, ["endpoints", "start", endpoint.id, "--no-wait", *url], env=WIDE)
    assert asked.exit_code == 0 and f"asked to start {endpoint.id}: it is PENDING now" in asked.output, asked.output
    again = runner.invoke(app, ["endpoints", "stop", endpoint.id, *url], env=WIDE)  # while it starts
    assert again.exit_code == 0 and _row(again.output, endpoint.id)[2] == "STOPPED", again.output
    client.close()
