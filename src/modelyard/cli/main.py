"""``modelyard`` command line. Every command but ``serve`` talks to a server through the SDK."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelyard import __version__
from modelyard.client import AuthenticationError, Modelyard, ModelyardError
from modelyard.endpoints.schemas import Endpoint

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
keys_app = typer.Typer(help="Create, list, revoke and suspend API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
members_app = typer.Typer(help="Who holds which roles in a workspace.", no_args_is_help=True)
app.add_typer(members_app, name="members")
secrets_app = typer.Typer(help="Workspace secrets (values are never printed, except by `secrets get`).",
                          no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")

console = Console()
"""Everything that comes from the server or the user is printed as ``Text`` (or through ``escape``):
Rich markup would otherwise eat ``[a-z]`` in a pattern, or style a model's answer."""
err_console = Console(stderr=True)
Url = Annotated[str | None, typer.Option("--url", envvar="MODELYARD_URL", help="Server URL [default: http://127.0.0.1:8000]")]
Workspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace ('-' lists across all)")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.",
    )] = None,
) -> None:
    """Modelyard: registry and serving layer for fine-tuned models."""


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
    try:
        settings.check_bind(host)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    configure_logging(settings)
    console.print(Text(f"Modelyard on http://{host}:{port}  (docs: http://{host}:{port}/docs)"))
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


def _client(url: str | None, timeout: float = 30.0) -> Modelyard:
    """The SDK's client; its key comes from MODELYARD_API_KEY or MODELYARD_HOME/credentials (see ``login``)."""
    try:
        return Modelyard(url, timeout=timeout)
    except ModelyardError as exc:  # an unreadable credentials file
        raise _fail(str(exc)) from None


def _fail(message: str) -> typer.Exit:
    console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)  # one line, however long
    return typer.Exit(1)


def _run(call: Any) -> Any:
    try:
        return call()
    except AuthenticationError as exc:
        raise _fail(f"{exc} (log in with `modelyard login`, or set MODELYARD_API_KEY)") from None
    except ModelyardError as exc:
        raise _fail(str(exc)) from None


@dataclass(frozen=True)
class Col:
    """A table column: ``whole`` ones (ids, digests) are printed whole, never wrapped or cut, so they can
    be copied; the others wrap; ``optional`` ones are left out when the terminal is too narrow for them."""

    field: str
    whole: bool = False
    optional: bool = False


WRAP_MIN = 10  # narrowest a wrapping column gets (or its header or longest value, if shorter) before columns are dropped
GAP = 2  # between columns: a blank divider and the left column's padding


def _cells(rows: list[dict[str, Any]], column: Col) -> list[str]:
    return ["" if row.get(column.field) is None else str(row[column.field]) for row in rows]


def _print_table(rows: list[dict[str, Any]], columns: Iterable[Col]) -> None:
    """Rows as a table that fits the terminal: optional columns go first, then wrapping columns wrap;
    whole columns keep their full width even when that makes the table wider than the terminal."""
    shown = list(columns)
    cells = {c.field: _cells(rows, c) for c in shown}

    def natural(c: Col) -> int:
        return max([cell_len(c.field), *(cell_len(line) for v in cells[c.field] for line in v.splitlines())])

    def floor(c: Col) -> int:
        return natural(c) if c.whole else min(natural(c), max(cell_len(c.field), WRAP_MIN))

    def needed(cols: list[Col]) -> int:
        return sum(floor(c) for c in cols) + GAP * (len(cols) - 1)

    while needed(shown) > console.width and any(c.optional for c in shown):
        shown.remove([c for c in shown if c.optional][-1])
    wider = needed(shown) > console.width  # the ids alone do not fit: print them whole all the same
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  width=needed(shown) if wider else None)
    for c in shown:
        if c.whole:
            table.add_column(c.field, no_wrap=True, min_width=natural(c))
        else:
            table.add_column(c.field, overflow="fold")
    for i in range(len(rows)):
        table.add_row(*(Text(cells[c.field][i]) for c in shown))
    console.print(table, crop=False)


def _show(items: list[BaseModel] | BaseModel, columns: list[Col], as_json: bool) -> None:
    if as_json:
        payload = [i.model_dump(mode="json", exclude_none=True) for i in items] if isinstance(items, list) else (
            items.model_dump(mode="json", exclude_none=True)
        )
        typer.echo(json.dumps(payload, indent=2))
        return
    rows = items if isinstance(items, list) else [items]
    _print_table([item.model_dump(mode="json") for item in rows], columns)


WORKSPACE_COLUMNS = [Col("name"), Col("description"), Col("created_at", optional=True)]


@workspaces_app.command("list")
def workspaces_list(url: Url = None, as_json: AsJson = False) -> None:
    """List workspaces."""
    page = _run(lambda: _client(url).workspaces.list())
    _show(list(page.auto_paging_iter()), WORKSPACE_COLUMNS, as_json)


@workspaces_app.command("create")
def workspaces_create(name: str, description: str | None = None, url: Url = None, as_json: AsJson = False) -> None:
    """Create a workspace."""
    fields = {"description": description} if description else {}
    _show(_run(lambda: _client(url).workspaces.create(name, **fields)), WORKSPACE_COLUMNS, as_json)


@workspaces_app.command("delete")
def workspaces_delete(name: str, url: Url = None) -> None:
    """Delete an empty workspace."""
    _run(lambda: _client(url).workspaces.delete(name))
    console.print(Text(f"deleted workspace {name}"))


MODEL_COLUMNS = [Col("workspace"), Col("name"), Col("id", whole=True), Col("fileset"),
                 Col("finetuning_type", optional=True), Col("created_at", optional=True)]
ADAPTER_COLUMNS = [Col("workspace"), Col("name"), Col("model"), Col("fileset"),
                   Col("finetuning_type", optional=True), Col("enabled")]


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


def _parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs; VALUE is JSON when it parses (``null`` clears a field), else a string."""
    fields: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: give FIELD=VALUE", param_hint="--set")
        try:
            fields[key] = json.loads(raw)
        except ValueError:
            fields[key] = raw
    return fields


@models_app.command("update")
def models_update(
    name: str,
    workspace: Workspace = "default",
    description: Annotated[str | None, typer.Option(help="new description")] = None,
    fileset: Annotated[str | None, typer.Option(help="ws/fileset holding the checkpoint (the spec is read again)")] = None,
    base_model: str | None = None,
    project: str | None = None,
    finetuning_type: str | None = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="FIELD=JSON",
        help="any other field of the models API, e.g. custom_fields='{\"team\": \"nlp\"}' or description=null "
             "(repeatable)",
    )] = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Change a model (PATCH: the fields given are merged, the others kept)."""
    fields = _parse_sets(set_)
    named = {"description": description, "fileset": fileset, "base_model": base_model, "project": project,
             "finetuning_type": finetuning_type}
    fields.update({k: v for k, v in named.items() if v is not None})
    if not fields:
        raise typer.BadParameter("nothing to change: give an option such as --description or --set FIELD=JSON")
    _show(_run(lambda: _client(url).models.update(workspace, name, **fields)), MODEL_COLUMNS, as_json)


@models_app.command("delete")
def models_delete(name: str, workspace: Workspace = "default", url: Url = None) -> None:
    """Delete a model and its adapters."""
    _run(lambda: _client(url).models.delete(workspace, name))
    console.print(Text(f"deleted model {workspace}/{name}"))


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


def _update_adapter(url: str | None, workspace: str, name: str, fields: dict[str, Any], as_json: bool) -> None:
    _show(_run(lambda: _client(url).adapters.update(workspace, name, **fields)), ADAPTER_COLUMNS, as_json)


@adapters_app.command("update")
def adapters_update(
    name: str,
    workspace: Workspace = "default",
    description: Annotated[str | None, typer.Option(help="new description")] = None,
    fileset: Annotated[str | None, typer.Option(help="ws/fileset with the new files (an attached adapter is "
                                                      "swapped to them while it serves)")] = None,
    rank: Annotated[int | None, typer.Option(help="lora_config.rank")] = None,
    alpha: Annotated[int | None, typer.Option(help="lora_config.alpha (with --rank)")] = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled", help="enable or disable it")] = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Change an adapter (PATCH: the fields given are changed, the others kept)."""
    if alpha is not None and rank is None:
        raise typer.BadParameter("--alpha needs --rank (lora_config is replaced as a whole)")
    fields: dict[str, Any] = {k: v for k, v in {"description": description, "fileset": fileset,
                                                 "enabled": enabled}.items() if v is not None}
    if rank is not None:
        fields["lora_config"] = {"rank": rank, **({"alpha": alpha} if alpha is not None else {})}
    if not fields:
        raise typer.BadParameter("nothing to change: give --description, --fileset, --rank or --enabled/--disabled")
    _update_adapter(url, workspace, name, fields, as_json)


@adapters_app.command("enable")
def adapters_enable(name: str, workspace: Workspace = "default", url: Url = None, as_json: AsJson = False) -> None:
    """Enable an adapter (an attached one is loaded into its endpoint's replicas again)."""
    _update_adapter(url, workspace, name, {"enabled": True}, as_json)


@adapters_app.command("disable")
def adapters_disable(name: str, workspace: Workspace = "default", url: Url = None, as_json: AsJson = False) -> None:
    """Disable an adapter (an attached one is unloaded and answers 404 until enabled)."""
    _update_adapter(url, workspace, name, {"enabled": False}, as_json)


@adapters_app.command("delete")
def adapters_delete(name: str, workspace: Workspace = "default", url: Url = None) -> None:
    """Delete an adapter."""
    _run(lambda: _client(url).adapters.delete(workspace, name))
    console.print(Text(f"deleted adapter {workspace}/{name}"))


ENDPOINT_COLUMNS = [Col("id", whole=True), Col("name"), Col("state"), Col("replicas"),
                    Col("model", optional=True), Col("engine", optional=True)]


def _show_endpoints(endpoints: list[Endpoint] | Endpoint, as_json: bool) -> None:
    """The endpoints table; an endpoint's error (often an engine log's tail) goes under it, first line only."""
    _show(endpoints, ENDPOINT_COLUMNS, as_json)
    if as_json:
        return
    for endpoint in endpoints if isinstance(endpoints, list) else [endpoints]:
        if endpoint.error:
            first, *more = endpoint.error.strip().splitlines() or [""]
            hint = "  (the rest: `modelyard endpoints get ID`)" if more else ""
            console.print(Text.assemble((endpoint.id, "bold"), ": ", ("error: ", "red"), first, hint), soft_wrap=True)


@endpoints_app.command("list")
def endpoints_list(url: Url = None, as_json: AsJson = False) -> None:
    """List endpoints."""
    _show_endpoints(_run(lambda: _client(url).endpoints.list()).data, as_json)


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
    _show_endpoints(created, as_json)


def _pause(seconds: float) -> None:
    """Between two polls of the server (one place, so tests can drive the loops)."""
    time.sleep(seconds)


NoWait = Annotated[bool, typer.Option("--no-wait", help="Return once the change is asked for, without waiting for it")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait before giving up (the change goes on regardless)")]
POLL = 0.5


def _change_state(url: str | None, endpoint_id: str, target: str, no_wait: bool, timeout: float) -> None:
    """PATCH the state, then wait until the endpoint reports it (or fails), and print what is true then.

    The PATCH answers at once with the state of that moment (still STARTED right after a stop): the
    supervisor moves it on (PENDING → STARTING → STARTED, STOPPING → STOPPED) in the background.
    """
    client = _client(url)
    endpoint = _run(lambda: client.endpoints.update(endpoint_id, state=target))
    verb = "start" if target == "STARTED" else "stop"
    if no_wait:
        if endpoint.state != target:
            console.print(Text(f"asked to {verb} {endpoint_id}: it is {endpoint.state} now and becomes {target} in "
                               "the background (watch it with `modelyard endpoints list`)"), soft_wrap=True)
            return
        _show_endpoints(endpoint, False)
        return
    deadline = time.monotonic() + timeout
    with console.status(Text(f"waiting for {endpoint_id} to be {target}: {endpoint.state}")) as status:
        while endpoint.state != target:
            if target == "STARTED" and endpoint.state in ("ERROR", "STOPPED"):
                break  # failed to start, or stopped meanwhile: no use waiting
            if time.monotonic() > deadline:
                _show_endpoints(endpoint, False)
                raise _fail(f"{endpoint_id} is still {endpoint.state} after {timeout:g} s; it becomes {target} "
                            "in the background (or use --timeout)")
            _pause(POLL)
            endpoint = _run(lambda: client.endpoints.retrieve(endpoint_id))
            status.update(Text(f"waiting for {endpoint_id} to be {target}: {endpoint.state}"))
    _show_endpoints(endpoint, False)
    if endpoint.state != target:
        raise _fail(f"{endpoint_id} did not start: it is {endpoint.state}")


@endpoints_app.command("start")
def endpoints_start(endpoint_id: str, no_wait: NoWait = False, timeout: Timeout = 900, url: Url = None) -> None:
    """Start the endpoint's replicas and wait until it is STARTED (its attached adapters loaded)."""
    _change_state(url, endpoint_id, "STARTED", no_wait, timeout)


@endpoints_app.command("stop")
def endpoints_stop(endpoint_id: str, no_wait: NoWait = False, timeout: Timeout = 120, url: Url = None) -> None:
    """Stop the endpoint's replicas and wait until it is STOPPED (its adapters stay attached)."""
    _change_state(url, endpoint_id, "STOPPED", no_wait, timeout)


@endpoints_app.command("delete")
def endpoints_delete(endpoint_id: str, url: Url = None) -> None:
    """Delete an endpoint (stops its replicas and detaches its adapters)."""
    _run(lambda: _client(url).endpoints.delete(endpoint_id))
    console.print(Text(f"deleted {endpoint_id}"))


LOG_POLL = 1.0


@endpoints_app.command("logs")
def endpoints_logs(
    endpoint_id: str,
    tail: Annotated[int, typer.Option("--tail", "-n", min=0, max=10_000, help="how many of the last lines")] = 100,
    replica: Annotated[int | None, typer.Option(help="the replica's number (default: the newest running one)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines (Ctrl-C stops)")] = False,
    url: Url = None,
) -> None:
    """Print an endpoint's engine log: the newest running replica's (or the last one's when none runs)."""
    client = _client(url)
    log = _run(lambda: client.endpoints.logs(endpoint_id, tail=tail, replica=replica))
    if len(log.replicas) > 1 and replica is None:
        note = f"replica {log.replica} (replicas with logs: {', '.join(map(str, log.replicas))}; --replica N for another)"
        err_console.print(Text(note, style="dim"))
    typer.echo(log.text, nl=False)
    if not follow:
        return
    current, offset = log.replica, log.offset
    try:
        while True:
            _pause(LOG_POLL)
            if current is not None:
                more = _run(lambda r=current, o=offset: client.endpoints.logs(endpoint_id, tail=10_000, replica=r,
                                                                              offset=o))
                typer.echo(more.text, nl=False)
                offset = more.offset
            if replica is None:  # follow the endpoint: a replacement replica, or the first one to start
                newest = _run(lambda: client.endpoints.logs(endpoint_id, tail=0))
                if newest.replica is not None and newest.replica != current:
                    err_console.print(Text(f"==> replica {newest.replica} <==", style="dim"))
                    current, offset = newest.replica, 0
    except KeyboardInterrupt:
        return


@endpoints_app.command("attach")
def endpoints_attach(
    endpoint_id: str,
    model_id: Annotated[str, typer.Argument(help="<endpoint_name>:<adapter_name>")],
    url: Url = None,
) -> None:
    """Attach an adapter; it is loaded into every running replica before this returns."""
    console.print(Text(_run(lambda: _client(url).endpoints.adapters.add(endpoint_id, model_id=model_id))))


@endpoints_app.command("adapters")
def endpoints_adapters(endpoint_id: str, url: Url = None, as_json: AsJson = False) -> None:
    """List the adapters attached to an endpoint."""
    listed = _run(lambda: _client(url).endpoints.adapters.list(endpoint_id))
    _show(listed.data, [Col("model_id", whole=True), Col("adapter_name"), Col("endpoint_name", optional=True)],
          as_json)


@endpoints_app.command("detach")
def endpoints_detach(endpoint_id: str, model_id: str, url: Url = None) -> None:
    """Detach an adapter; requests for it answer 404 from then on."""
    _run(lambda: _client(url).endpoints.adapters.remove(endpoint_id, model_id=model_id))
    console.print(Text(f"detached {model_id}"))


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

    return Progress(TextColumn(f"[bold]{escape(verb)}[/bold]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
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
    console.print(Text(f"{workspace}/{name}: uploaded {len(report.transferred)} files ({report.bytes} bytes), "
                       f"{len(report.skipped)} unchanged"))


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
    console.print(Text(f"{workspace}/{name}: downloaded {len(report.transferred)} files ({report.bytes} bytes), "
                       f"{len(report.skipped)} already there"))


FILESET_COLUMNS = [Col("workspace"), Col("name"), Col("purpose"), Col("description"), Col("created_at", optional=True)]


@filesets_app.command("delete")
def filesets_delete(fileset: Annotated[str, typer.Argument(help="ws/name")], url: Url = None) -> None:
    """Delete a fileset and its files (refused while a model or adapter uses it)."""
    workspace, name = _split_ref(fileset)
    _run(lambda: _client(url).filesets.delete(workspace, name))
    console.print(Text(f"deleted fileset {workspace}/{name}"))


@filesets_app.command("list")
def filesets_list(workspace: Workspace = "-", url: Url = None, as_json: AsJson = False) -> None:
    """List filesets (all workspaces by default)."""
    page = _run(lambda: _client(url).filesets.list(workspace))
    _show(list(page.auto_paging_iter()), FILESET_COLUMNS, as_json)


@filesets_app.command("files")
def filesets_files(fileset: str, url: Url = None, as_json: AsJson = False) -> None:
    """List the files of a fileset with their sizes and sha256."""
    workspace, name = _split_ref(fileset)
    _show(_run(lambda: _client(url).filesets.list_files(workspace, name)).data,
          [Col("path"), Col("size"), Col("sha256", whole=True)], as_json)


@app.command()
def login(
    url: Url = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="the key (asked for, hidden, when not given)")] = None,
) -> None:
    """Check an API key against the server and save it for that server's URL in MODELYARD_HOME/credentials."""
    from modelyard.client.credentials import save_login

    if api_key is None:
        api_key = typer.prompt("API key", hide_input=True)
    api_key = api_key.strip()
    if not api_key:
        raise _fail("no API key given")
    client = Modelyard(url, api_key=api_key)
    try:
        who = client.auth.whoami()
    except AuthenticationError as exc:
        raise _fail(f"the server refused this key: {exc}") from None
    except ModelyardError as exc:
        raise _fail(str(exc)) from None
    try:
        path = save_login(client.base_url, api_key, who.principal)
    except (OSError, ModelyardError) as exc:
        raise _fail(f"the key works but could not be saved: {exc}") from None
    console.print(Text(f"logged in to {client.base_url} as {who.principal}{_who_detail(who)} (key saved in {path})"),
                  soft_wrap=True)


def _who_detail(who: Any) -> str:
    parts = ["PlatformAdmin"] if who.platform_admin else []
    if who.scopes:
        parts.append("scopes " + ", ".join(who.scopes))
    if who.groups:
        parts.append("groups " + ", ".join(who.groups))
    return f" [{'; '.join(parts)}]" if parts else ""


@app.command()
def whoami(url: Url = None, as_json: AsJson = False) -> None:
    """Show who the server takes your key to be."""
    who = _run(lambda: _client(url).auth.whoami())
    if as_json:
        typer.echo(json.dumps(who.model_dump(mode="json"), indent=2))
        return
    console.print(Text(f"{who.principal}{_who_detail(who)}"), soft_wrap=True)
    for field in ("email", "default_workspace", "token_kind", "jti"):
        value = getattr(who, field)
        if value:
            console.print(Text(f"  {field}: {value}"), soft_wrap=True)


KEY_COLUMNS = [Col("jti", whole=True), Col("name"), Col("principal"), Col("status"), Col("expires_at"),
               Col("scopes", optional=True), Col("default_workspace", optional=True),
               Col("created_at", optional=True)]


def _key_rows(keys: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for key in keys:
        row = key.model_dump(mode="json", exclude={"token"})
        row["scopes"] = ", ".join(key.scopes) if key.scopes else ""
        rows.append(row)
    return rows


@keys_app.command("create")
def keys_create(
    name: Annotated[str | None, typer.Option(help="a name to recognise the key by")] = None,
    description: Annotated[str | None, typer.Option(help="what the key is for")] = None,
    workspace: Annotated[str | None, typer.Option("--workspace", "-w", help="the key's default workspace")] = None,
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="narrow the key to a scope, e.g. models:read (repeatable; none: not narrowed)")] = None,
    expires_in: Annotated[int | None, typer.Option(
        "--expires-in", min=1, help="seconds until the key expires [default: the server's]")] = None,
    principal: Annotated[str | None, typer.Option(help="create it for this principal (admins only)")] = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Create an API key and print its token (shown this once only)."""
    created = _run(lambda: _client(url).access_keys.create(
        name=name, description=description, workspace=workspace, scopes=scope or None,
        expires_in_seconds=expires_in, principal=principal,
    ))
    if as_json:
        typer.echo(json.dumps(created.model_dump(mode="json", exclude_none=True), indent=2))
        return
    _print_table(_key_rows([created]), KEY_COLUMNS)
    console.print(Text("Token (it will not be shown again: store it now, e.g. `modelyard login --api-key TOKEN`):",
                       style="yellow"), soft_wrap=True)
    typer.echo(created.token)


@keys_app.command("list")
def keys_list(url: Url = None, as_json: AsJson = False) -> None:
    """List API keys (yours; an admin sees everyone's)."""
    keys = _run(lambda: list(_client(url).access_keys.list_all()))
    if as_json:
        typer.echo(json.dumps([k.model_dump(mode="json", exclude_none=True) for k in keys], indent=2))
        return
    _print_table(_key_rows(keys), KEY_COLUMNS)


@keys_app.command("revoke")
def keys_revoke(jti: str, url: Url = None) -> None:
    """Revoke an API key for good."""
    done = _run(lambda: _client(url).access_keys.revoke(jti))
    console.print(Text(f"revoked {done.jti}" if done.revoked else f"{done.jti} was already revoked"))


def _set_key_status(url: str | None, jti: str, suspend: bool) -> None:
    keys = _client(url).access_keys
    done = _run(lambda: keys.suspend(jti) if suspend else keys.unsuspend(jti))
    console.print(Text(f"{done.jti} is {done.status}" + ("" if done.changed else " (unchanged)")))


@keys_app.command("suspend")
def keys_suspend(jti: str, url: Url = None) -> None:
    """Suspend an API key (refused until unsuspended)."""
    _set_key_status(url, jti, True)


@keys_app.command("unsuspend")
def keys_unsuspend(jti: str, url: Url = None) -> None:
    """Let a suspended API key in again."""
    _set_key_status(url, jti, False)


MEMBER_COLUMNS = [Col("principal"), Col("roles"), Col("granted_by", optional=True), Col("granted_at", optional=True)]
Roles = Annotated[list[str] | None, typer.Option("--role", help="Viewer, Editor or Admin (repeatable)")]


def _show_members(members: list[Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([m.model_dump(mode="json", exclude_none=True) for m in members], indent=2))
        return
    rows = [{**m.model_dump(mode="json"), "roles": ", ".join(m.roles)} for m in members]
    _print_table(rows, MEMBER_COLUMNS)


@members_app.command("list")
def members_list(workspace: str, url: Url = None, as_json: AsJson = False) -> None:
    """List a workspace's members and their roles."""
    _show_members(_run(lambda: _client(url).members.list(workspace)).data, as_json)


@members_app.command("add")
def members_add(workspace: str, principal: str, role: Roles = None, url: Url = None, as_json: AsJson = False) -> None:
    """Give a principal roles in a workspace (Editor when no --role)."""
    member = _run(lambda: _client(url).members.add(workspace, principal, roles=role or ["Editor"]))
    _show_members([member], as_json)


@members_app.command("set")
def members_set(workspace: str, principal: str, role: Roles = None, url: Url = None, as_json: AsJson = False) -> None:
    """Replace a principal's roles in a workspace."""
    if not role:
        raise typer.BadParameter("give the new roles with --role (repeatable); `members remove` takes them all away",
                                 param_hint="--role")
    _show_members([_run(lambda: _client(url).members.update(workspace, principal, roles=role))], as_json)


@members_app.command("remove")
def members_remove(workspace: str, principal: str, url: Url = None) -> None:
    """Take all of a principal's roles in a workspace away."""
    _run(lambda: _client(url).members.remove(workspace, principal))
    console.print(Text(f"removed {principal} from workspace {workspace}"))


SECRET_COLUMNS = [Col("workspace"), Col("name"), Col("description"), Col("created_at", optional=True),
                  Col("updated_at", optional=True)]


def _secret_value(value: str | None, from_file: str | None) -> str:
    """From --value, --from-file (``-``: standard input; read as is, a final newline included), or a hidden prompt."""
    if value is not None and from_file is not None:
        raise typer.BadParameter("give --value or --from-file, not both")
    if value is not None:
        return value
    if from_file is not None:
        try:
            return sys.stdin.read() if from_file == "-" else Path(from_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(f"cannot read {from_file}: {exc}") from None
    return typer.prompt("Secret value", hide_input=True)


@secrets_app.command("create")
def secrets_create(
    workspace: str,
    name: str,
    value: Annotated[str | None, typer.Option(help="the value (it stays in your shell history: prefer the prompt)")]
    = None,
    from_file: Annotated[str | None, typer.Option("--from-file", help="read the value from a file ('-': stdin)")]
    = None,
    description: Annotated[str | None, typer.Option(help="what the secret is for")] = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Create a secret; its value comes from --value, --from-file, or a hidden prompt, and is never printed."""
    secret_value = _secret_value(value, from_file)
    _show(_run(lambda: _client(url).secrets.create(workspace, name, value=secret_value, description=description)),
          SECRET_COLUMNS, as_json)


@secrets_app.command("update")
def secrets_update(
    workspace: str,
    name: str,
    value: Annotated[str | None, typer.Option(help="the new value (it stays in your shell history)")] = None,
    from_file: Annotated[str | None, typer.Option("--from-file", help="read the new value from a file ('-': stdin)")]
    = None,
    description: Annotated[str | None, typer.Option(help="the new description ('' clears it)")] = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Change a secret's value (--value, --from-file, or a hidden prompt when nothing else is given) or description."""
    new_value = None
    if value is not None or from_file is not None or description is None:
        new_value = _secret_value(value, from_file)
    fields: dict[str, Any] = {"value": new_value}
    if description is not None:
        fields["description"] = description or None
    _show(_run(lambda: _client(url).secrets.update(workspace, name, **fields)), SECRET_COLUMNS, as_json)


@secrets_app.command("list")
def secrets_list(workspace: str, url: Url = None, as_json: AsJson = False) -> None:
    """List a workspace's secrets (names and descriptions, no values)."""
    _show(_run(lambda: list(_client(url).secrets.list(workspace).auto_paging_iter())), SECRET_COLUMNS, as_json)


@secrets_app.command("show")
def secrets_show(workspace: str, name: str, url: Url = None, as_json: AsJson = False) -> None:
    """Show a secret's metadata (not its value: see `secrets get`)."""
    _show(_run(lambda: _client(url).secrets.retrieve(workspace, name)), SECRET_COLUMNS, as_json)


@secrets_app.command("get")
def secrets_get(workspace: str, name: str, url: Url = None) -> None:
    """Print a secret's value (and nothing else, for use in scripts)."""
    typer.echo(_run(lambda: _client(url).secrets.access(workspace, name)).value)


@secrets_app.command("delete")
def secrets_delete(workspace: str, name: str, url: Url = None) -> None:
    """Delete a secret."""
    _run(lambda: _client(url).secrets.delete(workspace, name))
    console.print(Text(f"deleted secret {workspace}/{name}"))


CHAT_COMMANDS = "/reset forgets the conversation, /exit (or Ctrl-D) ends it, Ctrl-C stops an answer"


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="an adapter, <endpoint_name>:<adapter>, or an endpoint name (its base)")],
    prompt: Annotated[str | None, typer.Argument(help="ask this once; leave it out to chat")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="longest answer, in tokens")] = 256,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="0 for greedy [default: the engine's]")] = None,
    system: Annotated[str | None, typer.Option(help="system message that opens the conversation")] = None,
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="workspace adapter names resolve in")] = "default",
    url: Url = None,
) -> None:
    """Chat with a served model: the answer is printed as it is generated.

    With PROMPT: one question, one answer. Without: a conversation, each line a turn (the model sees what
    was said before).
    """
    client = _client(url, timeout=300)  # the first token may wait for a replica to start
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
        _run(lambda: _stream_answer(client, model, messages, params, workspace, []))
        return
    console.print(Text(f"Chatting with {model}. {CHAT_COMMANDS}.", style="dim"), soft_wrap=True)
    while True:
        try:
            line = console.input(Text("> ", style="bold"))
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = list(opening)
            console.print(Text("(conversation forgotten)", style="dim"))
            continue
        messages.append({"role": "user", "content": line})
        answer: list[str] = []
        try:
            _stream_answer(client, model, messages, params, workspace, answer)
        except KeyboardInterrupt:
            typer.echo("")
            console.print(Text("(answer stopped)", style="dim"))
        except ModelyardError as exc:
            console.print(Text.assemble(("error:", "red"), " ", str(exc)))
            messages.pop()  # the turn did not happen: ask again
            continue
        messages.append({"role": "assistant", "content": "".join(answer)})


def _stream_answer(client: Modelyard, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
                   workspace: str, answer: list[str]) -> None:
    """Print the answer's pieces as they arrive (as plain text: no markup), collecting them in ``answer``."""
    chunks = client.chat.stream(model=model, messages=messages, workspace=workspace, **params)
    try:
        for chunk in chunks:
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    answer.append(piece)
                    typer.echo(piece, nl=False)
    finally:
        chunks.close()  # also when interrupted: the request ends here, not when collected
    typer.echo("")


USAGE_COLUMNS = [Col("start", whole=True), Col("model"), Col("requests"), Col("errors"), Col("prompt_tokens"),
                 Col("completion_tokens"), Col("p50_ms"), Col("p95_ms", optional=True), Col("p99_ms", optional=True),
                 Col("endpoint_id", optional=True)]


@app.command()
def usage(
    model: Annotated[str | None, typer.Option(help="only this model (the name requests called)")] = None,
    start: Annotated[str | None, typer.Option("--from", help="ISO-8601 [default: 24 hours before --to]")] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO-8601, exclusive [default: now]")] = None,
    granularity: Annotated[str, typer.Option("--granularity", "-g", help="minute, hour or day")] = "hour",
    workspace: Annotated[str | None, typer.Option("--workspace", "-w",
                                                  help="workspace [default: the key's]")] = None,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Requests, errors, tokens and latency percentiles (ms) per model per minute, hour or day."""
    records = _run(lambda: _client(url).usage.list(model=model, start=start, end=end, granularity=granularity,
                                                   workspace=workspace)).data
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    if not records:
        console.print(Text("No usage in this range: requests to served models are counted here (see "
                           "--from, --to and --model)."), soft_wrap=True)
        return
    rows = []
    for record in records:
        row = record.model_dump(mode="json", exclude={"latency_ms"})
        for name in ("p50", "p95", "p99"):
            value = getattr(record.latency_ms, name)
            row[f"{name}_ms"] = None if value is None else f"{value:.1f}"
        rows.append(row)
    _print_table(rows, USAGE_COLUMNS)


if __name__ == "__main__":
    app(prog_name="modelyard")
