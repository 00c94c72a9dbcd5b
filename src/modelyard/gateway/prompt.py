"""A registry model's ``prompt`` applied to an OpenAI request (pure: no I/O).

* ``system_prompt`` becomes the first message, as ``system``, unless the request already has a
  system (or developer) message. With ``system_prompt_template`` the text is that template rendered
  in a Jinja2 sandbox with ``icl_few_shot_examples`` and ``system_prompt``; without one, the few-shot
  examples (when given) follow the system prompt after a blank line.
* ``inference_params`` fill in what the request leaves out; the request wins. ``model`` among them
  is ignored (the gateway chooses what the upstream is sent).

Completions requests (``prompt`` rather than ``messages``) get the inference parameters and the
system text ahead of their prompt (only when the prompt is a single string).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from modelyard.errors import ApiError

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_SYSTEM_ROLES = ("system", "developer")


class PromptError(ApiError):
    """The model's prompt template cannot be rendered: a 400 for the request."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, code="invalid_prompt_template", param="model")


@lru_cache(maxsize=256)
def _template(source: str):  # type: ignore[no-untyped-def]
    try:
        return _ENV.from_string(source)
    except TemplateError as exc:
        raise PromptError(f"the model's system_prompt_template is not a valid Jinja2 template: {exc}") from None


def system_text(prompt: dict[str, Any] | None) -> str | None:
    """The system message the model's ``prompt`` asks for, or None."""
    if not prompt:
        return None
    system = prompt.get("system_prompt")
    examples = prompt.get("icl_few_shot_examples")
    template = prompt.get("system_prompt_template")
    if template:
        try:
            return _template(template).render(icl_few_shot_examples=examples or "", system_prompt=system or "")
        except PromptError:
            raise
        except Exception as exc:  # noqa: BLE001 - undefined variables, sandbox refusals
            raise PromptError(f"the model's system_prompt_template does not render: {exc}") from None
    parts = [part for part in (system, examples) if part]
    return "\n\n".join(parts) if parts else None


def apply(body: dict[str, Any], prompt: dict[str, Any] | None) -> dict[str, Any]:
    """``body`` with the model's prompt applied (a new dict; ``body`` is not changed)."""
    if not prompt:
        return body
    out = dict(body)
    params = prompt.get("inference_params") or {}
    for key, value in params.items():
        if key != "model" and value is not None and key not in out:
            out[key] = value
    text = system_text(prompt)
    if text:
        messages = out.get("messages")
        if isinstance(messages, list):
            has_system = any(isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES for m in messages)
            if not has_system:
                out["messages"] = [{"role": "system", "content": text}, *messages]
        elif isinstance(out.get("prompt"), str):
            out["prompt"] = f"{text}\n\n{out['prompt']}"
    return out
