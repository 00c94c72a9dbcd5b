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
