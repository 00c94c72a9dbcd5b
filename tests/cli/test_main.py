"""The CLI drives a live server through the SDK."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Modelyard
from tests.conftest import make_fileset

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "workspaces", "models", "adapters"):
        assert command in result.output


def test_models_and_adapters_round_trip(live_server: str) -> None:
    url = ["--url", live_server]
    with Modelyard(live_server) as client:
        make_fileset(client, "default/fs1")
    assert runner.invoke(app, ["models", "create", "cli-base", *url]).exit_code == 0
    result = runner.invoke(app, ["adapters", "create", "cli-ad", "--model", "cli-base", "--fileset", "fs1", *url])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["adapters", "list", "--json", *url])
    assert [a["name"] for a in json.loads(listed.output)] == ["cli-ad"]
    shown = json.loads(runner.invoke(app, ["models", "get", "cli-base", *url]).output)
    assert shown["adapters"][0]["model"] == "default/cli-base"


def test_errors_exit_nonzero_with_the_server_message(live_server: str) -> None:
    result = runner.invoke(app, ["models", "get", "ghost-model", "--url", live_server])
    assert result.exit_code == 1
    assert "Model with workspace 'default' and name 'ghost-model' not found" in result.output


def test_unreachable_server_is_a_clear_error() -> None:
    result = runner.invoke(app, ["models", "list", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_filesets_upload_skip_and_download_resume(live_server: str, tmp_path: Path) -> None:
    source = tmp_path / "ckpt"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4000)
    url = ["--url", live_server]
    first = runner.invoke(app, ["filesets", "upload", str(source), "default/ckpt", *url])
    assert first.exit_code == 0, first.output
    assert "uploaded 2 files" in first.output
    second = runner.invoke(app, ["filesets", "upload", str(source), "default/ckpt", *url])
    assert "uploaded 0 files" in second.output and "2 unchanged" in second.output
    (source / "config.json").write_text('{"changed": true}')
    assert "uploaded 1 files" in runner.invoke(app, ["filesets", "upload", str(source), "default/ckpt", *url]).output

    target = tmp_path / "back"
    (target / "sub").mkdir(parents=True)
    data = (source / "sub" / "weights.bin").read_bytes()
    (target / "sub" / "weights.bin.part").write_bytes(data[:1000])  # an interrupted earlier download
    result = runner.invoke(app, ["filesets", "download", "default/ckpt", str(target), *url])
    assert result.exit_code == 0, result.output
    assert (target / "sub" / "weights.bin").read_bytes() == data
    assert (target / "config.json").read_text() == '{"changed": true}'
    assert not (target / "sub" / "weights.bin.part").exists()
    listed = runner.invoke(app, ["filesets", "files", "default/ckpt", "--json", *url])
    assert [f["path"] for f in json.loads(listed.output)] == ["config.json", "sub/weights.bin"]
    again = runner.invoke(app, ["filesets", "download", "default/ckpt", str(target), *url])
    assert "downloaded 0 files" in again.output


def test_endpoint_commands(live_server: str, fixture_models: dict[str, Path]) -> None:
    from tests.endpoints.conftest import register

    url = ["--url", live_server]
    with Modelyard(live_server) as client:
        register(client, fixture_models)
    created = runner.invoke(app, ["endpoints", "create", "default/tiny", "--stopped", "--json", *url])
    assert created.exit_code == 0, created.output
    endpoint = json.loads(created.output)
    assert endpoint["state"] == "STOPPED" and endpoint["model"] == "default/tiny"
    model_id = f"{endpoint['name']}:pirate"
    assert model_id in runner.invoke(app, ["endpoints", "attach", endpoint["id"], model_id, *url]).output
    listed = runner.invoke(app, ["endpoints", "adapters", endpoint["id"], "--json", *url])
    assert [a["adapter_name"] for a in json.loads(listed.output)] == ["pirate"]
    listed_all = json.loads(runner.invoke(app, ["endpoints", "list", "--json", *url]).output)
    assert [e["id"] for e in listed_all] == [endpoint["id"]]
    wrong = runner.invoke(app, ["endpoints", "attach", endpoint["id"], "pirate", *url])
    assert wrong.exit_code == 1 and "endpoint_model_name:adapter_name" in wrong.output
    assert "detached" in runner.invoke(app, ["endpoints", "detach", endpoint["id"], model_id, *url]).output
    assert "deleted" in runner.invoke(app, ["endpoints", "delete", endpoint["id"], *url]).output
    missing = runner.invoke(app, ["endpoints", "get", endpoint["id"], *url])
    assert missing.exit_code == 1 and "No endpoint with this id exists" in missing.output
