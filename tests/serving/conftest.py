"""Champions trained once into the session's MLflow registry, API keys, a temporary event log
and the service in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import SAMPLE

RECOMMENDER_ONLY_EASE = """
[selection]
metric = "ndcg@10"
[[candidates]]
model = "ease"
grid = { l2 = [300.0] }
"""


def as_(keys: dict[str, str], scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[scope]}"}


@pytest.fixture(scope="session")
def keys(tracking: Path) -> dict[str, str]:
    """One key per scope, in a keys file the service reads ($OMNI_KEYS_FILE)."""
    from models.keys import create_key

    path = tracking / "keys.json"
    pytest.MonkeyPatch().setenv("OMNI_KEYS_FILE", str(path))
    return {scope: create_key([scope], path) for scope in ("recommend", "plan", "admin")}


@pytest.fixture(scope="session")
def champions(tracking: Path, keys: dict[str, str]) -> Path:
    """Both champions trained on the sample; the service's event log in the tracking dir."""
    from experiments.training import train_forecaster, train_recommender

    pytest.MonkeyPatch().setenv("OMNI_EVENTS_URL", f"sqlite:///{tracking}/serving-events.db")
    config = tracking / "ease.toml"
    config.write_text(RECOMMENDER_ONLY_EASE)
    train_recommender(SAMPLE, config)
    train_forecaster(SAMPLE, horizon=4, freq="W", windows=1)
    return tracking


@pytest.fixture(scope="session")
def client(champions: Path):
    from serving.service import OmnichannelService

    OmnichannelService.config["metrics"] = {"enabled": False}
    with TestClient(OmnichannelService.to_asgi()) as test_client:
        yield test_client
