"""``modelyard`` command line. Every command but ``serve`` talks to a server through the SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from modelyard.client import Modelyard, ModelyardError

app = typer.Typer(help="Modelyard: registry and serving layer for fine-tuned models.", no_args_is_help=True)
workspaces_app = typer.Typer(help="Manage workspaces.", no_args_is_help=True)
models_app = typer.Typer(help="Register and inspect models.", no_args_is_help=True)
adapters_app = typer.Typer(help="Register and inspect adapters.", no_args_is_help=True)
app.add_typer(workspaces_app, name="workspaces")
app.add_typer(models_app, name="models")
app.add_typer(adapters_app, name="adapters")
filesets_app = typer.Typer(help="Upload, download and inspect filesets.", no_args_is_help=True)
app.add_typer(filesets_app, name="filesets")
endpoints_app = typer.Typer(help="Serve a base model and attach adapters to it at run time.", no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")

console = Console()
Url = Annotated[str | None, typer.Option("--url", envvar="MODELYARD_URL", help="Server URL [default: http://127.0.0.1:8000]")]
Workspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace ('-' lists across all)")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON")]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
) -> None:
    """Start the server (SQLite under MODELYARD_HOME unless MODELYARD_DATABASE_URL is set)."""
    import uvicorn

    from modelyard.app import configure_logging, create_app
    from modelyard.config import Settings

    settings = Settings()
    configure_logging(settings)
    console.print(f"Modelyard on http://{host}:{port}  (docs: http://{host}:{port}/docs)", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
) -> None:
    """End to end on the embedded defaults: server, tiny model + 3 adapters, a LoRA endpoint, routed requests.

    Leaves the server running afterwards (Ctrl-C stops it).
    """
    from modelyard.cli.demo import run_demo

    run_demo(host, port, console)


def _client(url: str | None) -> Modelyard:
    return Modelyard(url)


def _run(call: Any) -> Any:
    try:
        return call()
    except ModelyardError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _show(items: list[BaseModel] | BaseModel, columns: list[str], as_json: bool) -> None:
    if as_json:
        payload = [i.model_dump(mode="json", exclude_none=True) for i in items] if isinstance(items, list) else (
            items.model_dump(mode="json", exclude_none=True)
        )
        typer.echo(json.dumps(payload, indent=2))
        return
    rows = items if isinstance(items, list) else [items]
    table = Table(*columns)
    for item in rows:
        data = item.model_dump(mode="json")
        table.add_row(*("" if data.get(c) is None else str(data.get(c)) for c in columns))
    console.print(table)


@workspaces_app.command("list")
def workspaces_list(url: Url = None, as_json: AsJson = False) -> None:
    """List workspaces."""
    page = _run(lambda: _client(url).workspaces.list())
    _show(list(page.auto_paging_iter()), ["name", "description", "created_at"], as_json)


@workspaces_app.command("create")
def workspaces_create(name: str, description: str | None = None, url: Url = None, as_json: AsJson = False) -> None:
    """Create a workspace."""
    fields = {"description": description} if description else {}
    _show(_run(lambda: _client(url).workspaces.create(name, **fields)), ["name", "description"], as_json)


@workspaces_app.command("delete")
def workspaces_delete(name: str, url: Url = None) -> None:
    """Delete an empty workspace."""
    _run(lambda: _client(url).workspaces.delete(name))
    console.print(f"deleted workspace {name}")


MODEL_COLUMNS = ["workspace", "name", "id", "fileset", "finetuning_type", "created_at"]
ADAPTER_COLUMNS = ["workspace", "name", "model", "fileset", "finetuning_type", "enabled"]


@models_app.command("list")
def models_list(workspace: Workspace = "-", url: Url = None, as_json: AsJson = False) -> None:
    """List models (all workspaces by default)."""
    page = _run(lambda: _client(url).models.list(workspace))
    _show(list(page.auto_paging_iter()), MODEL_COLUMNS, as_json)


@models_app.command("get")
def models_get(name: str, workspace: Workspace = "default", url: Url = None) -> None:
    """Show one model as JSON (with spec.linear_layers)."""
    _show(_run(lambda: _client(url).models.retrieve(workspace, name, verbose=True)), [], True)


@models_app.command("create")
def models_create(
    name: str,
    workspace: Workspace = "default",
    fileset: Annotated[str | None, typer.Option(help="ws/fileset holding the checkpoint")] = None,
    description: str | None = None,
    base_model: str | None = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Register a model."""
    fields = {k: v for k, v in {"fileset": fileset, "description": description, "base_model": base_model}.items() if v}
    _show(_run(lambda: _client(url).models.create(workspace, name=name, **fields)), MODEL_COLUMNS, as_json)


@models_app.command("delete")
def models_delete(name: str, workspace: Workspace = "default", url: Url = None) -> None:
    """Delete a model and its adapters."""
    _run(lambda: _client(url).models.delete(workspace, name))
    console.print(f"deleted model {workspace}/{name}")


@adapters_app.command("list")
def adapters_list(workspace: Workspace = "-", url: Url = None, as_json: AsJson = False) -> None:
    """List adapters (all workspaces by default)."""
    page = _run(lambda: _client(url).adapters.list(workspace))
    _show(list(page.auto_paging_iter()), ADAPTER_COLUMNS, as_json)


@adapters_app.command("create")
def adapters_create(
    name: str,
    model: Annotated[str, typer.Option(help="Base model: name or ws/name")],
    fileset: Annotated[str, typer.Option(help="ws/fileset holding the adapter")],
    finetuning_type: Annotated[str, typer.Option(help="e.g. lora, dora, qlora")] = "lora",
    workspace: Workspace = "default",
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Register an adapter on a base model."""
    adapter = _run(lambda: _client(url).adapters.create(
        workspace, model=model, name=name, fileset=fileset, finetuning_type=finetuning_type
    ))
    _show(adapter, ADAPTER_COLUMNS, as_json)


@adapters_app.command("delete")
def adapters_delete(name: str, workspace: Workspace = "default", url: Url = None) -> None:
    """Delete an adapter."""
    _run(lambda: _client(url).adapters.delete(workspace, name))
    console.print(f"deleted adapter {workspace}/{name}")


if __name__ == "__main__":
    app()


ENDPOINT_COLUMNS = ["id", "name", "model", "state", "replicas", "engine", "error"]


@endpoints_app.command("list")
def endpoints_list(url: Url = None, as_json: AsJson = False) -> None:
    """List endpoints."""
    _show(_run(lambda: _client(url).endpoints.list()).data, ENDPOINT_COLUMNS, as_json)


@endpoints_app.command("get")
def endpoints_get(endpoint_id: str, url: Url = None) -> None:
    """Show one endpoint as JSON."""
    _show(_run(lambda: _client(url).endpoints.retrieve(endpoint_id)), [], True)


@endpoints_app.command("create")
def endpoints_create(
    model: Annotated[str, typer.Argument(help="base model, ws/name")],
    hardware: Annotated[str, typer.Option(help="see `GET /v1/hardware`")] = "cpu",
    min_replicas: int = 1,
    max_replicas: int = 1,
    max_loras: Annotated[int, typer.Option(help="adapters resident per replica")] = 4,
    max_lora_rank: int = 16,
    engine: Annotated[str, typer.Option(help="builtin (CPU) or vllm")] = "builtin",
    stopped: Annotated[bool, typer.Option("--stopped", help="create it STOPPED (start it later)")] = False,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Create a LoRA-enabled endpoint; it starts at once unless --stopped (watch `modelyard endpoints list`)."""
    created = _run(lambda: _client(url).endpoints.create(
        model=model, hardware=hardware, min_replicas=min_replicas, max_replicas=max_replicas,
        max_loras=max_loras, max_lora_rank=max_lora_rank, engine=engine, state="STOPPED" if stopped else "STARTED",
    ))
    _show(created, ENDPOINT_COLUMNS, as_json)


@endpoints_app.command("start")
def endpoints_start(endpoint_id: str, url: Url = None) -> None:
    """Ask for the endpoint to run (state STARTED)."""
    _show(_run(lambda: _client(url).endpoints.update(endpoint_id, state="STARTED")), ENDPOINT_COLUMNS, False)


@endpoints_app.command("stop")
def endpoints_stop(endpoint_id: str, url: Url = None) -> None:
    """Stop the endpoint's replicas (its adapters stay attached)."""
    _show(_run(lambda: _client(url).endpoints.update(endpoint_id, state="STOPPED")), ENDPOINT_COLUMNS, False)


@endpoints_app.command("delete")
def endpoints_delete(endpoint_id: str, url: Url = None) -> None:
    """Delete an endpoint (stops its replicas and detaches its adapters)."""
    _run(lambda: _client(url).endpoints.delete(endpoint_id))
    console.print(f"deleted {endpoint_id}")


@endpoints_app.command("attach")
def endpoints_attach(
    endpoint_id: str,
    model_id: Annotated[str, typer.Argument(help="<endpoint_name>:<adapter_name>")],
    url: Url = None,
) -> None:
    """Attach an adapter; it is loaded into every running replica before this returns."""
    console.print(_run(lambda: _client(url).endpoints.adapters.add(endpoint_id, model_id=model_id)))


@endpoints_app.command("adapters")
def endpoints_adapters(endpoint_id: str, url: Url = None, as_json: AsJson = False) -> None:
    """List the adapters attached to an endpoint."""
    listed = _run(lambda: _client(url).endpoints.adapters.list(endpoint_id))
    _show(listed.data, ["model_id", "adapter_name", "endpoint_name"], as_json)


@endpoints_app.command("detach")
def endpoints_detach(endpoint_id: str, model_id: str, url: Url = None) -> None:
    """Detach an adapter; requests for it answer 404 from then on."""
    _run(lambda: _client(url).endpoints.adapters.remove(endpoint_id, model_id=model_id))
    console.print(f"detached {model_id}")


def _split_ref(reference: str) -> tuple[str, str]:
    workspace, _, name = reference.rpartition("/")
    if not name:
        raise typer.BadParameter(f"{reference!r}: give a fileset as ws/name (or name, in 'default')")
    return workspace or "default", name


def _bytes_progress(verb: str) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn(f"[bold]{verb}[/bold]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


@filesets_app.command("upload")
def filesets_upload(
    folder: Annotated[str, typer.Argument(help="local directory to upload (every file under it)")],
    fileset: Annotated[str, typer.Argument(help="ws/name; created if it does not exist")],
    retries: Annotated[int, typer.Option(help="attempts again for a file whose upload fails")] = 3,
    url: Url = None,
) -> None:
    """Upload a directory: files whose sha256 already matches are skipped, a failed file is retried."""
    from modelyard.client.client import upload_dir

    workspace, name = _split_ref(fileset)
    if not Path(folder).is_dir():
        raise typer.BadParameter(f"{folder!r} is not a directory")
    with _bytes_progress("upload") as progress:
        task = progress.add_task("upload", total=None)
        report = _run(lambda: upload_dir(
            _client(url), folder, workspace, name, retries=retries,
            on_start=lambda total: progress.update(task, total=total),
            progress=lambda n: progress.advance(task, n),
        ))
    console.print(f"{workspace}/{name}: uploaded {len(report.transferred)} files ({report.bytes} bytes), "
                  f"{len(report.skipped)} unchanged")


@filesets_app.command("download")
def filesets_download(
    fileset: Annotated[str, typer.Argument(help="ws/name")],
    folder: Annotated[str, typer.Argument(help="local directory (created if needed)")],
    url: Url = None,
) -> None:
    """Download a fileset; files already present with the right sha256 are skipped, partial ones resume."""
    from modelyard.client.client import download_dir

    workspace, name = _split_ref(fileset)
    with _bytes_progress("download") as progress:
        task = progress.add_task("download", total=None)
        report = _run(lambda: download_dir(
            _client(url), workspace, name, folder,
            on_start=lambda total: progress.update(task, total=total),
            progress=lambda n: progress.advance(task, n),
        ))
    console.print(f"{workspace}/{name}: downloaded {len(report.transferred)} files ({report.bytes} bytes), "
                  f"{len(report.skipped)} already there")


@filesets_app.command("list")
def filesets_list(workspace: Workspace = "-", url: Url = None, as_json: AsJson = False) -> None:
    """List filesets (all workspaces by default)."""
    page = _run(lambda: _client(url).filesets.list(workspace))
    _show(list(page.auto_paging_iter()), ["workspace", "name", "purpose", "description", "created_at"], as_json)


@filesets_app.command("files")
def filesets_files(fileset: str, url: Url = None, as_json: AsJson = False) -> None:
    """List the files of a fileset with their sizes and sha256."""
    workspace, name = _split_ref(fileset)
    _show(_run(lambda: _client(url).filesets.list_files(workspace, name)).data, ["path", "size", "sha256"], as_json)
