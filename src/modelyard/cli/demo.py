"""``modelyard demo``: the whole product in one command, on the embedded defaults.

Starts the server, builds the tiny test model and three LoRA adapters (locally, nothing is
downloaded), registers them through the API, creates a LoRA endpoint, attaches the adapters, asks
the base model and each adapter the same question, detaches one adapter to show it now answers 404,
and leaves the server running. Everything after the server starts goes through the SDK.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelyard.client import ConflictError, Modelyard, NotFoundError
from modelyard.client.client import upload_dir
from modelyard.client.credentials import credentials_path, load_api_key
from modelyard.config import Settings

ADAPTERS = ("pirate", "chef", "space")
MODEL = "demo-tiny"
QUESTION = [{"role": "user", "content": "hello there"}]


def _start_server(settings: Settings, host: str, port: int, console: Console) -> tuple[object, threading.Event]:
    import uvicorn

    from modelyard.app import configure_logging, create_app

    settings.log_level = "WARNING"
    settings.check_bind(host)
    configure_logging(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_config=None,
                                           access_log=False))
    done = threading.Event()  # waited on instead of Thread.join, which a signal can wrongly end (bpo-45274)

    def serve() -> None:
        try:
            server.run()
        finally:
            done.set()

    threading.Thread(target=serve, name="modelyard-server", daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if done.is_set() or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start on {host}:{port} (is the port taken?)")
        time.sleep(0.05)
    return server, done


def _build_files(settings: Settings, console: Console) -> dict[str, Path]:
    """Build the fixtures once (reused on later runs)."""
    from modelyard.engine.fixtures import build_fixture_set

    quiet_transformers()
    with console.status("Building the tiny model and three adapters (trained here, about 10 s the first time)"):
        return build_fixture_set(settings.home / "demo" / "fixtures", adapters=ADAPTERS)


def quiet_transformers() -> None:
    """No progress bars or deprecation chatter from transformers in the demo's output."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _register(client: Modelyard, built: dict[str, Path], console: Console) -> None:
    """Upload the checkpoint and adapters as filesets (unchanged files are skipped), then register them."""
    uploads = [(f"{MODEL}-files", built["base"]), *((f"demo-{a}-files", built[a]) for a in ADAPTERS)]
    for fileset, folder in uploads:
        report = upload_dir(client, folder, "default", fileset)
        console.print(f"Fileset default/{fileset}: {len(report.transferred)} files uploaded, "
                      f"{len(report.skipped)} already there")
    try:
        client.models.create("default", name=MODEL, fileset=f"default/{MODEL}-files",
                             description="Tiny llama built by `modelyard demo`")
    except ConflictError:
        pass
    for adapter in ADAPTERS:
        try:
            client.adapters.create("default", model=MODEL, name=f"demo-{adapter}", fileset=f"demo-{adapter}-files",
                                   finetuning_type="lora")
        except ConflictError:
            client.adapters.update("default", f"demo-{adapter}", enabled=True)


class _Stop(Exception):
    """SIGTERM, turned into an exception so the server can stop its engines on the way out."""


def _raise_stop(*_: object) -> None:
    raise _Stop


def run_demo(host: str, port: int, console: Console) -> None:
    settings = Settings()
    url = f"http://{host}:{port}"
    console.print(f"[bold]Modelyard demo[/bold]  (data in {escape(str(settings.home))})")
    built = _build_files(settings, console)
    signal.signal(signal.SIGTERM, _raise_stop)  # from here on SIGTERM behaves like Ctrl-C
    server, done = _start_server(settings, host, port, console)
    try:
        console.print(f"Server up on {url}")
        _walk_through(url, built, console, settings)
        while not done.wait(0.5):
            pass
    except (KeyboardInterrupt, _Stop):
        console.print("Stopping the server and its engines")
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        done.wait(60)


def _walk_through(url: str, built: dict[str, Path], console: Console, settings: Settings) -> None:
    # the key the server just started wrote into its MODELYARD_HOME (its first PlatformAdmin key), or one
    # saved there for this URL by `modelyard login`; ahead of MODELYARD_API_KEY, which may be another server's
    client = Modelyard(url, api_key=load_api_key(url, home=settings.home), timeout=120)
    _register(client, built, console)
    console.print(f"Registered model default/{MODEL} and adapters {', '.join('demo-' + a for a in ADAPTERS)}")

    endpoint = next((e for e in client.endpoints.list(mine=True).data if e.model == f"default/{MODEL}"), None)
    if endpoint is None:
        endpoint = client.endpoints.create(model=MODEL, hardware="cpu", display_name="Modelyard demo")
    elif endpoint.state != "STARTED":
        client.endpoints.update(endpoint.id, state="STARTED")
    with console.status(f"Starting endpoint {endpoint.name} (one built-in engine replica)"):
        while (endpoint := client.endpoints.retrieve(endpoint.id)).state != "STARTED":
            if endpoint.state == "ERROR":
                raise SystemExit(f"endpoint failed: {endpoint.error}")
            time.sleep(0.3)
    console.print(f"Endpoint [cyan]{escape(endpoint.name)}[/cyan] is STARTED ({endpoint.id})")

    for adapter in ADAPTERS:
        started = time.perf_counter()
        client.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:demo-{adapter}")
        console.print(f"Attached demo-{adapter} in {time.perf_counter() - started:.2f} s")

    table = Table(title=f"One question, four models: {QUESTION[0]['content']!r}")
    table.add_column("model")
    table.add_column("answer (greedy, 12 tokens)")
    answers = {}
    for model in (endpoint.name, *(f"demo-{a}" for a in ADAPTERS)):
        reply = client.chat.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
        answers[model] = reply["choices"][0]["message"]["content"]
        table.add_row(Text(model), Text(repr(answers[model])))  # a model's answer is not markup
    console.print(table)
    console.print(f"{len(set(answers.values()))} different answers from {len(answers)} models on one endpoint.")

    gone = f"demo-{ADAPTERS[-1]}"
    client.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:{gone}")
    try:
        client.chat.create(model=gone, messages=QUESTION, max_tokens=4)
        console.print(f"[red]{gone} still answered after it was detached[/red]")
    except NotFoundError as exc:
        console.print(f"Detached {gone}; it now answers {exc.status_code} ({exc.code}).")

    console.print(
        f"\nThe server keeps running on [bold]{url}[/bold] (Ctrl-C stops it). Try:\n"
        f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' "
        f"-d '{{\"model\": \"demo-pirate\", \"messages\": [{{\"role\": \"user\", \"content\": \"hello\"}}]}}'\n"
        f"  or the openai SDK with base_url=\"{url}/v1\"; API docs at {url}/docs\n"
        f"  Web console (the playground compares the adapters side by side): {url}/console\n"
        f"  (with auth on, add -H \"Authorization: Bearer $KEY\": the admin key is in "
        f"{escape(str(credentials_path(settings.home)))})",
        highlight=False, soft_wrap=True,
    )


__all__ = ["run_demo"]
