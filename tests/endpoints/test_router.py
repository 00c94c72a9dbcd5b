"""Endpoint and attachment rules through Together's own SDK, on both databases.

Endpoints here are created STOPPED, so no engine runs: attaching records the binding, which is
loaded when the endpoint starts (tests/endpoints/test_serving.py covers the running path).
"""

from __future__ import annotations

import re
import sys

import pytest
import together
from together import Together

from modelyard.client import ConflictError, Modelyard
from modelyard.config import Settings
from tests.seeds import seed_text


def error_of(exc: together.APIStatusError) -> dict:
    """The ``error`` object of the response body (Together's SDK keeps the whole body)."""
    assert isinstance(exc.body, dict) and set(exc.body) == {"error"}, exc.body
    return exc.body["error"]


def _stopped(tg: Together, **extra: object):
    return tg.endpoints.create(model="default/tiny", hardware="cpu",
                               autoscaling={"min_replicas": 1, "max_replicas": 2}, state="STOPPED",
                               extra_body=extra or None)


def test_create_list_retrieve_update_delete(registry: tuple[Modelyard, Together]) -> None:
    _, tg = registry
    endpoint = _stopped(tg, display_name="My tiny")
    assert re.fullmatch(r"endpoint-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", endpoint.id)
    assert re.fullmatch(r"default/tiny-[0-9a-f]{8}", endpoint.name)
    assert (endpoint.owner, endpoint.model, endpoint.type, endpoint.state) == ("default", "default/tiny", "dedicated", "STOPPED")
    assert endpoint.autoscaling.max_replicas == 2 and endpoint.hardware == "cpu"
    assert [e.id for e in tg.endpoints.list().data] == [endpoint.id]
    assert tg.endpoints.list(type="serverless").data == []
    assert tg.endpoints.retrieve(endpoint.id).display_name == "My tiny"
    updated = tg.endpoints.update(endpoint.id, display_name="renamed", autoscaling={"min_replicas": 1, "max_replicas": 3})
    assert updated.display_name == "renamed" and updated.autoscaling.max_replicas == 3
    tg.endpoints.delete(endpoint.id)
    with pytest.raises(together.NotFoundError) as missing:
        tg.endpoints.retrieve(endpoint.id)
    assert error_of(missing.value)["message"] == "No endpoint with this id exists"


def test_hardware_lists_the_cpu(registry: tuple[Modelyard, Together]) -> None:
    _, tg = registry
    hardware = tg.endpoints.list_hardware()
    assert "cpu" in [h.id for h in hardware.data]


def test_create_errors(registry: tuple[Modelyard, Together]) -> None:
    _, tg = registry
    with pytest.raises(together.NotFoundError, match="Model 'default/ghost' not found"):
        tg.endpoints.create(model="ghost", hardware="cpu", autoscaling={"min_replicas": 1, "max_replicas": 1})
    with pytest.raises(together.BadRequestError, match="hardware 'a100' is not available"):
        tg.endpoints.create(model="tiny", hardware="a100", autoscaling={"min_replicas": 1, "max_replicas": 1})
    with pytest.raises(together.BadRequestError, match="max_replicas must be >= "):
        tg.endpoints.create(model="tiny", hardware="cpu", autoscaling={"min_replicas": 2, "max_replicas": 1})


@pytest.mark.parametrize("python", ["interpreter-without-vllm", "/nonexistent/python"])
def test_a_vllm_endpoint_without_vllm_is_refused_at_create(registry: tuple[Modelyard, Together], settings: Settings,
                                                          python: str) -> None:
    _, tg = registry
    settings.vllm_python = sys.executable if python == "interpreter-without-vllm" else python  # no vllm here
    with pytest.raises(together.UnprocessableEntityError) as err:
        _stopped(tg, engine="vllm")
    message = error_of(err.value)["message"]
    assert "make vllm-env" in message and "MODELYARD_VLLM_PYTHON" in message
    assert tg.endpoints.list().data == []  # nothing stored


def test_attach_list_detach(registry: tuple[Modelyard, Together]) -> None:
    _, tg = registry
    endpoint = _stopped(tg)
    added = tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert added.api_model_id == f"{endpoint.name}:pirate"
    again = tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")  # same endpoint: fine
    assert again.api_model_id == added.api_model_id
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
    listed = tg.endpoints.adapters.list(endpoint.id)
    assert [(a.api_model_id, a.adapter_name, a.endpoint_name) for a in listed.data] == [
        (f"{endpoint.name}:pirate", "pirate", endpoint.name), (f"{endpoint.name}:chef", "chef", endpoint.name),
    ]
    removed = tg.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:pirate")
    assert removed.deleted is True and removed.api_model_id == f"{endpoint.name}:pirate"
    assert [a.adapter_name for a in tg.endpoints.adapters.list(endpoint.id).data] == ["chef"]


def _seed_messages() -> list[str]:
    text = seed_text("004")
    return re.findall(r"“(.+?)”:", text)


@pytest.mark.parametrize("case", [
    "bad-format", "name-mismatch", "unknown-adapter", "unknown-endpoint", "lora-off", "incompatible",
    "bound-elsewhere", "not-bound", "serverless", "public",
])
def test_every_seed_error_message(registry: tuple[Modelyard, Together], case: str) -> None:
    ours, tg = registry
    messages = _seed_messages()
    assert len(messages) == 10
    endpoint = _stopped(tg)
    name = endpoint.name
    expected: tuple[int, str]
    if case == "bad-format":
        for bad in ("pirate", f"{name}:", ":pirate", f"{name}:pirate:x"):
            with pytest.raises(together.BadRequestError) as err:
                tg.endpoints.adapters.add(endpoint.id, model_id=bad)
        call, expected = (lambda: None), (400, messages[0])
        actual = err.value
    else:
        if case == "name-mismatch":
            call, expected = (lambda: tg.endpoints.adapters.add(endpoint.id, model_id="default/other-1234abcd:pirate")), (400, messages[1])
        elif case == "unknown-adapter":
            call, expected = (lambda: tg.endpoints.adapters.add(endpoint.id, model_id=f"{name}:ghost")), (404, messages[2])
        elif case == "unknown-endpoint":
            call, expected = (lambda: tg.endpoints.adapters.add("endpoint-nope", model_id=f"{name}:pirate")), (404, messages[3])
        elif case == "lora-off":
            plain = _stopped(tg, enable_lora=False)
            call, expected = (lambda: tg.endpoints.adapters.add(plain.id, model_id=f"{plain.name}:pirate")), (400, messages[4])
        elif case == "incompatible":
            ours.models.create("default", name="other-base", fileset="default/tiny-files")
            ours.adapters.create("default", model="other-base", name="stranger", fileset="pirate-files",
                                 finetuning_type="lora")
            call, expected = (lambda: tg.endpoints.adapters.add(endpoint.id, model_id=f"{name}:stranger")), (400, messages[5])
        elif case == "bound-elsewhere":
            other = _stopped(tg)
            tg.endpoints.adapters.add(other.id, model_id=f"{other.name}:pirate")
            call, expected = (lambda: tg.endpoints.adapters.add(endpoint.id, model_id=f"{name}:pirate")), (409, messages[6])
        elif case == "not-bound":
            call, expected = (lambda: tg.endpoints.adapters.remove(endpoint.id, model_id=f"{name}:pirate")), (409, messages[7])
        elif case == "serverless":
            response = tg.post("/endpoints", cast_to=object, body={
                "model": "tiny", "hardware": "cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1},
                "state": "STOPPED", "type": "serverless"})
            call, expected = (lambda: tg.endpoints.adapters.add(response["id"], model_id=f"{response['name']}:pirate")), (400, messages[8])
        else:
            public = _stopped(tg, visibility="public")
            call, expected = (lambda: tg.endpoints.adapters.add(public.id, model_id=f"{public.name}:pirate")), (400, messages[9])
        with pytest.raises(together.APIStatusError) as err:
            call()
        actual = err.value
    assert actual.status_code == expected[0]
    assert error_of(actual) == {"message": expected[1], "type": "invalid_request_error", "param": None,
                                "code": error_of(actual)["code"]}
    assert error_of(actual)["code"]


def test_attached_adapters_and_served_models_cannot_be_deleted(registry: tuple[Modelyard, Together]) -> None:
    ours, tg = registry
    endpoint = _stopped(tg)
    tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:pirate")
    with pytest.raises(ConflictError, match="is attached to endpoint"):
        ours.adapters.delete("default", "pirate")
    with pytest.raises(ConflictError, match="is served by endpoint"):
        ours.models.delete("default", "tiny")
    tg.endpoints.adapters.remove(endpoint.id, model_id=f"{endpoint.name}:pirate")
    ours.adapters.delete("default", "pirate")


def test_disabled_adapter_cannot_be_attached(registry: tuple[Modelyard, Together]) -> None:
    ours, tg = registry
    endpoint = _stopped(tg)
    ours.adapters.update("default", "chef", enabled=False)
    with pytest.raises(together.BadRequestError, match="disabled"):
        tg.endpoints.adapters.add(endpoint.id, model_id=f"{endpoint.name}:chef")
