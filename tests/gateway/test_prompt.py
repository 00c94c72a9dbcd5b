"""A registry model's prompt applied to requests (pure functions)."""

from __future__ import annotations

import pytest

from modelyard.gateway.prompt import PromptError, apply, system_text

USER = [{"role": "user", "content": "hi"}]


def test_no_prompt_leaves_the_body_alone() -> None:
    body = {"model": "m", "messages": USER}
    assert apply(body, None) is body
    assert apply(body, {}) is body


def test_system_prompt_goes_first_unless_the_request_has_one() -> None:
    prompt = {"system_prompt": "Be brief."}
    assert apply({"messages": USER}, prompt)["messages"] == [{"role": "system", "content": "Be brief."}, *USER]
    own = [{"role": "user", "content": "a"}, {"role": "system", "content": "mine"}]
    assert apply({"messages": own}, prompt)["messages"] == own
    developer = [{"role": "developer", "content": "mine"}, *USER]
    assert apply({"messages": developer}, prompt)["messages"] == developer


def test_the_template_is_rendered_with_the_examples() -> None:
    prompt = {"system_prompt": "S", "icl_few_shot_examples": "Q: a A: b",
              "system_prompt_template": "{{ system_prompt }}|{{ icl_few_shot_examples }}"}
    assert system_text(prompt) == "S|Q: a A: b"
    assert apply({"messages": USER}, prompt)["messages"][0] == {"role": "system", "content": "S|Q: a A: b"}
    assert system_text({"system_prompt_template": "Examples: {{ icl_few_shot_examples }}"}) == "Examples: "
    assert system_text({"system_prompt": "S", "icl_few_shot_examples": "E"}) == "S\n\nE"
    assert system_text({"icl_few_shot_examples": "E"}) == "E"
    assert system_text({"inference_params": {"temperature": 0}}) is None


@pytest.mark.parametrize("template", ["{{ nope }}", "{% if %}", "{{ system_prompt.__class__.__mro__ }}"])
def test_a_template_that_fails_raises_prompt_error(template: str) -> None:
    with pytest.raises(PromptError):
        system_text({"system_prompt": "s", "system_prompt_template": template})


def test_inference_params_fill_in_and_the_request_wins() -> None:
    prompt = {"inference_params": {"temperature": 0.2, "max_tokens": 10, "top_p": None, "model": "other",
                                   "stop": ["\n"], "seed": 3}}
    body = {"model": "m", "messages": USER, "temperature": 1.0}
    out = apply(body, prompt)
    assert out == {"model": "m", "messages": USER, "temperature": 1.0, "max_tokens": 10, "stop": ["\n"], "seed": 3}
    assert body == {"model": "m", "messages": USER, "temperature": 1.0}  # not changed in place


def test_completions_get_the_system_text_before_the_prompt() -> None:
    out = apply({"prompt": "Once"}, {"system_prompt": "S", "inference_params": {"max_tokens": 5}})
    assert out == {"prompt": "S\n\nOnce", "max_tokens": 5}
    assert apply({"prompt": ["a", "b"]}, {"system_prompt": "S"}) == {"prompt": ["a", "b"]}
