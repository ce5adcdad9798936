"""The service in-process, on the session's champions and API keys (tests/conftest.py), and the
headers that carry a key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient

from tests.conftest import SAMPLE


def as_(keys: dict[str, str], scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[scope]}"}


@contextmanager
def signed_in(client: TestClient, keys: dict[str, str], scope: str) -> Iterator[TestClient]:
    """The session's client with a key of ``scope`` on every request until the block ends; then
    without, so that no test inherits the key another one chose."""
    client.headers.update(as_(keys, scope))
    try:
        yield client
    finally:
        client.headers.pop("Authorization", None)


class SessionClient(TestClient):
    """A test client that makes its app's service BentoML's "current service" before every
    request.

    BentoML keeps one current service per process, which /readyz and /model_info answer for: any
    other app started in the process (:func:`own_service`, schemathesis's) replaces it while it
    runs and clears it when it stops. In its own worker a service is always the current one.
    """

    service: Any = None

    def request(self, *args: Any, **kwargs: Any) -> Any:
        from _bentoml_sdk.service import set_current_service

        set_current_service(self.service)
        return super().request(*args, **kwargs)


def service_app() -> Any:
    """The service as an in-process ASGI app, its Prometheus metrics off: every app would
    register BentoML's metrics in the one global registry again (DuplicateTimeseries), and
    pytest-randomly decides which app starts first."""
    from serving.service import OmnichannelService

    OmnichannelService.config["metrics"] = {"enabled": False}
    return OmnichannelService.to_asgi()


@pytest.fixture(scope="session")
def client(champions: Path) -> Iterator[TestClient]:
    from _bentoml_sdk.service import get_current_service

    with SessionClient(service_app()) as test_client:
        test_client.service = get_current_service()  # the instance its start-up made
        yield test_client


@pytest.fixture
def own_service(champions: Path):
    """A second service instance in-process, for a test that changes its settings first (the
    session's client makes its own service current again at its next request)."""

    @contextmanager
    def start() -> Iterator[TestClient]:
        with TestClient(service_app()) as own:
            yield own

    return start


@pytest.fixture(scope="session")
def linked_keys() -> tuple[str, str]:
    """A store loyalty card and an app device the identities table links (one customer)."""
    ids = pd.read_csv(SAMPLE / "identities.csv.gz")
    pairs = ids.groupby("link_value")["channel"].agg(lambda c: sorted(c) == ["app", "store"])
    link = pairs[pairs].index[0]
    rows = ids[ids["link_value"] == link].set_index("channel")["customer_key"]
    return rows["store"], rows["app"]
