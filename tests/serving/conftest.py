"""Champions trained once into the session's MLflow registry, API keys, a temporary event log
and the service in-process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    from serving.keys import create_key

    path = tracking / "keys.json"
    pytest.MonkeyPatch().setenv("OMNI_KEYS_FILE", str(path))
    return {scope: create_key([scope], path) for scope in ("recommend", "plan", "admin")}


@pytest.fixture(scope="session")
def champions(tracking: Path, keys: dict[str, str]) -> Path:
    """Both champions trained on the sample; the service's event log in the tracking dir."""
    from experiments.pipelines.training import train_forecaster, train_recommender

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


@pytest.fixture
def own_service(client: TestClient):
    """A second service instance in-process, for a test that changes its settings first.

    BentoML keeps one "current service" per process and clears it when an app shuts down; the
    session's service is made current again afterwards, as it is in its own worker.
    """
    from _bentoml_sdk.service import get_current_service, set_current_service

    from serving.service import OmnichannelService

    @contextmanager
    def start() -> Iterator[TestClient]:
        session = get_current_service()
        try:
            with TestClient(OmnichannelService.to_asgi()) as own:
                yield own
        finally:
            set_current_service(session)

    return start
