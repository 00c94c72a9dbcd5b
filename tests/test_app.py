from modelyard import __version__
from modelyard.client import Modelyard


def test_health(client: Modelyard, database_url: str) -> None:
    health = client.health()
    assert health == {"status": "ok", "version": __version__, "database": database_url.split(":")[0].split("+")[0],
                      "engines": {"endpoints": 0, "replicas": 0, "requests_in_flight": 0}}


def test_unknown_route_is_404_json(client: Modelyard) -> None:
    response = client._http.get("/apis/nothing")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_malformed_json_is_422(client: Modelyard) -> None:
    response = client._http.post(
        "/apis/models/v2/workspaces/default/models", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"


def test_json_logs_carry_no_terminal_colour_codes() -> None:
    import io
    import json
    import logging

    from modelyard.app import JsonLogFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("test.colours")
    logger.addHandler(handler)
    logger.propagate = False
    try:  # what uvicorn logs at start, and a message with colours of its own
        logger.warning("Uvicorn running on %s", "http://127.0.0.1:8000",
                       extra={"color_message": "Uvicorn running on \x1b[1m%s\x1b[0m", "route": "\x1b[32m/v1\x1b[0m"})
        logger.warning("\x1b[31mred\x1b[0m text")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "\x1b" not in out.getvalue() and "\\u001b" not in out.getvalue()
    assert lines[0]["msg"] == "Uvicorn running on http://127.0.0.1:8000" and "color_message" not in lines[0]
    assert lines[0]["route"] == "/v1" and lines[1]["msg"] == "red text"


def test_head_works_wherever_get_does_and_405_names_every_allowed_method(client: Modelyard) -> None:
    http = client._http
    for path in ("/health", "/apis/models/v2/workspaces/default/models", "/v1/models", "/openapi.json"):
        got, head = http.get(path), http.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers.get("content-length") == got.headers.get("content-length"), path
    wrong = http.put("/apis/models/v2/workspaces/default/models")  # GET (list) and POST (create) live there
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, POST"
    assert http.delete("/health").headers["allow"] == "GET, HEAD"


def test_every_error_status_is_declared_with_its_family_shape(client: Modelyard) -> None:
    spec = client._http.get("/openapi.json").json()
    create = spec["paths"]["/apis/models/v2/workspaces/{workspace}/models"]["post"]["responses"]
    assert {"400", "403", "404", "409", "413", "422", "503"} <= set(create)
    assert create["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Detail"}
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIError"}
    assert chat["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIError"}
    download = spec["paths"]["/apis/files/v2/workspaces/{workspace}/filesets/{name}/-/{path}"]["get"]["responses"]
    assert {"404", "416", "502"} <= set(download)
