"""``modelyard usage`` prints the records as a table (or JSON) from a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from modelyard.cli.main import app as cli
from modelyard.usage.recorder import UsageRecorder
from tests.usage.conftest import Clock

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
DAY = ["--from", "2026-11-30T00:00:00Z", "--to", "2026-12-01T00:00:00Z"]


@pytest.fixture
def live_recorder(app: FastAPI, live_server: str, clock: Clock) -> Iterator[UsageRecorder]:
    made = getattr(app.state, "usage", None) is None
    if made:
        app.state.usage = UsageRecorder(app.state.db, flush_interval=3600)
    app.state.usage.clock = clock
    yield app.state.usage
    if made:
        app.state.usage = None


def test_usage_table_and_json(live_server: str, live_recorder: UsageRecorder, clock: Clock) -> None:
    url = ["--url", live_server]
    empty = runner.invoke(cli, ["usage", *DAY, *url], env=WIDE)
    assert empty.exit_code == 0 and "No usage in this range" in empty.output, empty.output
    clock.at("2026-11-30T10:15:00")
    for latency in (0.05, 0.05, 0.05, 2.0):
        live_recorder.record(workspace="default", model="pirate", endpoint_id="ep-1", ok=True, prompt_tokens=12,
                             completion_tokens=30, latency_s=latency)
    live_recorder.record(workspace="default", model="base", endpoint_id=None, ok=False, prompt_tokens=5,
                         completion_tokens=0, latency_s=0.01)
    shown = runner.invoke(cli, ["usage", "-g", "minute", *DAY, *url], env=WIDE)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].split() == ["start", "model", "requests", "errors", "prompt_tokens", "completion_tokens",
                                "p50_ms", "p95_ms", "p99_ms", "endpoint_id"]
    base, pirate = (line.split() for line in lines[2:4])
    assert base == ["2026-11-30T10:15:00Z", "base", "1", "1", "5", "0"]  # no latency: blank cells
    assert pirate[:6] == ["2026-11-30T10:15:00Z", "pirate", "4", "0", "48", "120"] and pirate[-1] == "ep-1"
    assert abs(float(pirate[6]) / 50 - 1) < 0.1 and abs(float(pirate[8]) / 2000 - 1) < 0.1
    filtered = runner.invoke(cli, ["usage", "--model", "base", "--json", *DAY, *url])
    assert filtered.exit_code == 0, filtered.output
    [record] = json.loads(filtered.output)
    assert (record["model"], record["granularity"], record["requests"], record["start"]) == (
        "base", "hour", 1, "2026-11-30T10:00:00Z")
    bad = runner.invoke(cli, ["usage", "-g", "week", *url])
    assert bad.exit_code == 1 and "granularity" in bad.output
