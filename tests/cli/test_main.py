"""The CLI drives a live server through the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from modelyard import __version__
from modelyard.cli.main import app
from modelyard.client import Modelyard
from modelyard.config import Settings
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


def test_server_text_prints_verbatim_not_as_markup(live_server: str) -> None:
    """A pattern in a server message (`[a-z]`) and brackets in stored values are printed as they are."""
    url = ["--url", live_server]
    bad = runner.invoke(app, ["models", "get", "x[a-z]+[bold]", *url])
    assert bad.exit_code == 1
    assert "name 'x[a-z]+[bold]' not found" in bad.output, bad.output
    description = "matches [a-z]+ and [bold]not bold[/bold]"
    assert runner.invoke(app, ["workspaces", "create", "brackets", "--description", description, *url]).exit_code == 0
    listed = runner.invoke(app, ["workspaces", "list", *url], env={"COLUMNS": "200"})
    assert description in listed.output, listed.output


def _register_and_create_endpoints(live_server: str, fixture_models: dict[str, Path], count: int) -> list[dict]:
    from tests.endpoints.conftest import register

    with Modelyard(live_server) as client:
        register(client, fixture_models)
        return [client.endpoints.create(model="default/tiny", state="STOPPED").model_dump(mode="json")
                for _ in range(count)]


def test_endpoint_ids_print_whole_at_80_columns(live_server: str, fixture_models: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import modelyard.cli.main as cli

    endpoints = _register_and_create_endpoints(live_server, fixture_models, 2)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(cli, "console", Console())  # as a fresh process would start, in an 80-column terminal
    for command in (["endpoints", "list"], ["endpoints", "get", endpoints[0]["id"]]):
        result = runner.invoke(app, [*command, "--url", live_server])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["endpoints", "list", "--url", live_server])
    lines = result.output.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), result.output
    for endpoint in endpoints:
        row = next(line for line in lines if line.startswith(endpoint["id"] + " "))
        assert "STOPPED" in row, result.output  # short columns stay on the id's line; long ones wrap below
    assert "default/" in result.output


def test_python_dash_m_runs_every_command(live_server: str) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    version = subprocess.run([sys.executable, "-m", "modelyard", "--version"], capture_output=True, text=True,
                             env=env, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.strip() == f"modelyard {__version__}", version
    for module in ("modelyard", "modelyard.cli.main"):
        listed = subprocess.run([sys.executable, "-m", module, "endpoints", "list", "--json", "--url", live_server],
                                capture_output=True, text=True, env=env, timeout=60, check=False)
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed


def test_version_option() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"modelyard {__version__}"


def test_models_update(live_server: str) -> None:
    url = ["--url", live_server]
    assert runner.invoke(app, ["models", "create", "upd-model", "--description", "old", *url]).exit_code == 0
    result = runner.invoke(app, ["models", "update", "upd-model", "--description", "new one", "--project", "p1",
                                 "--set", 'custom_fields={"team": "nlp"}', "--json", *url])
    assert result.exit_code == 0, result.output
    model = json.loads(result.output)
    assert (model["description"], model["project"], model["custom_fields"]) == ("new one", "p1", {"team": "nlp"})
    cleared = json.loads(runner.invoke(app, ["models", "update", "upd-model", "--set", "description=null", "--json",
                                             *url]).output)
    assert "description" not in cleared and cleared["custom_fields"] == {"team": "nlp"}  # a merge
    nothing = runner.invoke(app, ["models", "update", "upd-model", *url])
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    missing = runner.invoke(app, ["models", "update", "ghost-model", "--description", "x", *url])
    assert missing.exit_code == 1 and "ghost-model" in missing.output


def test_adapters_update_enable_disable(live_server: str) -> None:
    url = ["--url", live_server]
    with Modelyard(live_server) as client:
        make_fileset(client, "default/upd-fs")
        make_fileset(client, "default/upd-fs2")
        client.models.create("default", name="upd-base")
        client.adapters.create("default", model="upd-base", name="upd-ad", fileset="upd-fs", finetuning_type="lora")
    result = runner.invoke(app, ["adapters", "update", "upd-ad", "--description", "tuned", "--fileset", "upd-fs2",
                                 "--rank", "8", "--alpha", "16", "--json", *url])
    assert result.exit_code == 0, result.output
    adapter = json.loads(result.output)
    assert adapter["description"] == "tuned" and adapter["fileset"] == "default/upd-fs2"
    assert adapter["lora_config"] == {"rank": 8, "alpha": 16} and adapter["enabled"] is True
    assert json.loads(runner.invoke(app, ["adapters", "disable", "upd-ad", "--json", *url]).output)["enabled"] is False
    table = runner.invoke(app, ["adapters", "enable", "upd-ad", *url], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "True" in table.output
    assert json.loads(runner.invoke(app, ["adapters", "update", "upd-ad", "--disabled", "--json", *url]).output)[
        "enabled"] is False


def test_filesets_delete(live_server: str) -> None:
    url = ["--url", live_server]
    with Modelyard(live_server) as client:
        make_fileset(client, "default/del-fs")
        client.models.create("default", name="del-user", fileset="default/del-fs")
    refused = runner.invoke(app, ["filesets", "delete", "default/del-fs", *url])
    assert refused.exit_code == 1 and "is used by" in refused.output
    assert runner.invoke(app, ["models", "delete", "del-user", *url]).exit_code == 0
    deleted = runner.invoke(app, ["filesets", "delete", "default/del-fs", *url])
    assert deleted.exit_code == 0 and "deleted fileset default/del-fs" in deleted.output
    listed = json.loads(runner.invoke(app, ["filesets", "list", "--json", *url]).output)
    assert "del-fs" not in [f["name"] for f in listed]


def test_endpoint_logs_tail_replica_and_follow(live_server: str, fixture_models: dict[str, Path], settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`endpoints logs` reads the replica logs the supervisor writes (here written by the test, so no
    engine runs): the newest by default, whole lines only, and new lines with --follow."""
    import modelyard.cli.main as cli

    (endpoint,) = _register_and_create_endpoints(live_server, fixture_models, 1)
    url = ["--url", live_server]
    empty = runner.invoke(app, ["endpoints", "logs", endpoint["id"], *url])
    assert empty.exit_code == 0 and empty.stdout == ""
    folder = settings.home / "logs" / "endpoints" / endpoint["id"]
    folder.mkdir(parents=True)
    old = folder / "replica-1.log"
    old.write_text("".join(f"old {i}\n" for i in range(5)))
    os.utime(old, (1, 1))
    new = folder / "replica-2.log"
    new.write_text("".join(f"line {i} [a-z]\n" for i in range(300)) + "a line still being written")

    result = runner.invoke(app, ["endpoints", "logs", endpoint["id"], "--tail", "3", *url])
    assert result.exit_code == 0, result.output
    assert result.stdout == "line 297 [a-z]\nline 298 [a-z]\nline 299 [a-z]\n"
    assert "replicas with logs: 1, 2" in result.stderr
    assert len(runner.invoke(app, ["endpoints", "logs", endpoint["id"], *url]).stdout.splitlines()) == 100
    assert runner.invoke(app, ["endpoints", "logs", endpoint["id"], "--replica", "1", "-n", "2", *url]).stdout == (
        "old 3\nold 4\n")
    no_replica = runner.invoke(app, ["endpoints", "logs", endpoint["id"], "--replica", "7", *url])
    assert no_replica.exit_code == 1 and "no log for replica 7" in no_replica.output
    unknown = runner.invoke(app, ["endpoints", "logs", "endpoint-unknown", *url])
    assert unknown.exit_code == 1 and "No endpoint with this id exists" in unknown.output

    with Modelyard(live_server) as client:
        log = client.endpoints.logs(endpoint["id"], tail=0)
        assert (log.replica, log.replicas, log.text) == (2, [1, 2], "")
        with new.open("a") as handle:
            handle.write(", now whole\nnext\n")
        more = client.endpoints.logs(endpoint["id"], replica=2, offset=log.offset, tail=10)
        assert more.lines == ["a line still being written, now whole", "next"]
        assert client.endpoints.logs(endpoint["id"], replica=2, offset=more.offset).text == ""

    def append() -> None:
        with new.open("a") as handle:
            handle.write("followed\n")

    steps = iter([
        append,
        lambda: (folder / "replica-3.log").write_text("a new replica\n"),
        lambda: None,
    ])

    def pause(_: float) -> None:
        step = next(steps, None)
        if step is None:
            raise KeyboardInterrupt
        step()

    monkeypatch.setattr(cli, "_pause", pause)
    followed = runner.invoke(app, ["endpoints", "logs", endpoint["id"], "-n", "1", "--follow", *url])
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "next\nfollowed\na new replica\n"
    assert "==> replica 3 <==" in followed.stderr
