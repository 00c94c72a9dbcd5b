"""The README's main command: `modelyard demo` runs end to end on the embedded defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port


def test_demo_serves_four_different_answers_and_a_404_after_detach(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home")}
    env.pop("MODELYARD_DATABASE_URL", None)
    demo = subprocess.Popen([sys.executable, "-m", "modelyard.cli.main", "demo", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "keeps running" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "4 different answers from 4 models on one endpoint." in output, output
        assert "Detached demo-space; it now answers 404 (model_not_found)." in output, output
        assert f"http://127.0.0.1:{port}" in output
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(60)
    engines = subprocess.run(["pgrep", "-f", f"modelyard.engine --model {tmp_path}"], capture_output=True, text=True, check=False)
    assert engines.stdout.strip() == "", "the demo left engines running after SIGTERM"
