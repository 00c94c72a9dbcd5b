"""Every command block in the README runs as written against a fresh server.

Blocks (```bash and ```python) run in the order the README shows them, in one working folder,
against one fresh server, so a later block may use what an earlier one made — as a reader following
the page would. The README's ``127.0.0.1:8000`` / ``localhost:8000`` become the test server's
address; nothing else is changed. A block preceded by ``<!-- readme-test: skip: <why> -->`` is not
run (only the ``make`` commands, which are what runs this test).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.config import Settings
from tests.conftest import TRUSTED

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<note>[^>]*?) -->\n)?^```(?P<lang>bash|python)\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE
)


def blocks() -> list[tuple[int, str, str, str | None]]:
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 1, m["lang"], m["body"], m["note"]) for m in BLOCK.finditer(text)]


def test_the_readme_has_blocks_to_run() -> None:
    runnable = [b for b in blocks() if not (b[3] or "").startswith("skip")]
    assert {lang for _, lang, _, _ in runnable} == {"bash", "python"} and len(runnable) >= 4
    assert all(note.startswith("skip: ") for *_, note in blocks() if note)  # every skip says why


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'readme.db'}",
                    trusted_fileset_workspaces=TRUSTED, supervisor_interval=0.5, engine_start_timeout=120)


def test_every_command_block_runs_as_written(live_server: str, tmp_path: Path) -> None:
    work = tmp_path / "reader"
    work.mkdir()
    address = live_server.removeprefix("http://")
    env = {**os.environ, "MODELYARD_URL": live_server, "NO_COLOR": "1", "COLUMNS": "200",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = 0
    for line, lang, body, note in blocks():
        if note and note.startswith("skip"):
            continue
        script = body.replace("127.0.0.1:8000", address).replace("localhost:8000", address)
        argv = ["bash", "-euo", "pipefail", "-c", script] if lang == "bash" else [sys.executable, "-c", script]
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, (
            f"README block at line {line} ({lang}) failed with {done.returncode}:\n{body}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
        # curl exits 0 on a 4xx: an error body in the output is a failed example too
        assert '{"detail"' not in done.stdout and '{"error"' not in done.stdout, (line, done.stdout[-3000:])
        ran += 1
    assert ran >= 4
