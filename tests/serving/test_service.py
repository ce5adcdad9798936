"""The service in-process (ASGI) against champions trained into a temporary MLflow registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import SAMPLE

pytestmark = pytest.mark.integration

RECOMMENDER_ONLY_EASE = """
[selection]
metric = "ndcg@10"
[[candidates]]
model = "ease"
grid = { l2 = [300.0] }
"""


@pytest.fixture(scope="module")
def keys(tracking: Path) -> dict[str, str]:
    from models.keys import create_key

    path = tracking / "keys.json"
    pytest.MonkeyPatch().setenv("OMNI_KEYS_FILE", str(path))
    return {scope: create_key([scope], path) for scope in ("recommend", "plan")}


@pytest.fixture(scope="module")
def client(tracking: Path, keys: dict[str, str]):
    from experiments.training import train_forecaster, train_recommender

    config = tracking / "ease.toml"
    config.write_text(RECOMMENDER_ONLY_EASE)
    train_recommender(SAMPLE, config)
    train_forecaster(SAMPLE, horizon=4, freq="W", windows=1)
    from serving.service import OmnichannelService

    OmnichannelService.config["metrics"] = {"enabled": False}
    with TestClient(OmnichannelService.to_asgi()) as test_client:
        test_client.headers["Authorization"] = f"Bearer {keys['recommend']}"
        yield test_client


def test_keys_scopes_and_missing_or_bad_keys(client: TestClient, keys: dict[str, str]) -> None:
    body = {"store_id": "S001", "item_ids": ["I000010"], "horizon": 1}
    assert client.post("/forecast", json=body).status_code == 403  # a recommend key
    planner = {"Authorization": f"Bearer {keys['plan']}"}
    assert client.post("/forecast", json=body, headers=planner).status_code == 200
    assert (
        client.post(
            "/recommend", json={"customer_id": "c"}, headers={"Authorization": ""}
        ).status_code
        == 401
    )
    forged = keys["recommend"][:-4] + "AAAA"
    assert (
        client.post(
            "/recommend", json={"customer_id": "c"}, headers={"Authorization": f"Bearer {forged}"}
        ).status_code
        == 401
    )
    assert client.get("/livez").status_code == 200  # probes stay open
    stored = (Path(os.environ["OMNI_KEYS_FILE"])).read_text()
    assert keys["recommend"].split("_", 2)[2] not in stored  # only hashes are kept


def test_recommend_known_and_unknown_customers(client: TestClient) -> None:
    from serving.models import load_champions

    known = str(load_champions().recommender.customer_ids_[0])
    response = client.post("/recommend", json={"customer_id": known, "n": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == 5 and body["fallback"] is False and body["model_version"]
    unknown = client.post(
        "/recommend", json={"customer_id": "never-seen", "n": 3, "store_id": "S001"}
    )
    assert unknown.status_code == 200 and unknown.json()["fallback"] is True
    assert [i["rank"] for i in unknown.json()["items"]] == [1, 2, 3]


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": "c", "n": 0},
        {"customer_id": "c", "n": 101},
        {"customer_id": "c", "n": "5"},  # strict: no string-to-int coercion
        {"customer_id": "", "n": 5},
        {"customer_id": "c", "surprise": 1},
        {},
    ],
)
def test_recommend_rejects_bad_requests_with_400(client: TestClient, body: dict) -> None:
    assert client.post("/recommend", json=body).status_code == 400


def test_similar_items_and_unknown_item(client: TestClient) -> None:
    ok = client.post("/similar_items", json={"item_id": "I000010", "n": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3
    missing = client.post("/similar_items", json={"item_id": "NOPE", "n": 3})
    assert missing.status_code == 404 and "NOPE" in missing.text


def test_forecast_and_its_errors(client: TestClient, keys: dict[str, str]) -> None:
    client.headers["Authorization"] = f"Bearer {keys['plan']}"
    ok = client.post("/forecast", json={"store_id": "S001", "item_ids": ["I000010"], "horizon": 2})
    assert ok.status_code == 200, ok.text
    rows = ok.json()["forecast"]
    assert len(rows) == 2 and all(r["p10"] <= r["p50"] <= r["p90"] for r in rows)
    assert (
        client.post(
            "/forecast", json={"store_id": "S999", "item_ids": ["I000010"], "horizon": 2}
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/forecast", json={"store_id": "S001", "item_ids": ["I000010"], "horizon": 9}
        ).status_code
        == 400
    )
    too_many = {"store_id": "S001", "item_ids": ["I"] * 1001, "horizon": 1}
    assert client.post("/forecast", json=too_many).status_code == 400
