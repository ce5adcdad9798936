"""The measurement loop end to end: the service records what it shows, generated customers react
with a known effect, and `omni report kpis` (and GET /kpis) recovers it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from tests.conftest import SAMPLE
from tests.processes import omni
from tests.serving.conftest import as_

pytestmark = pytest.mark.integration

BASE = 0.10  # any exposed customer buys one of the items shown with this probability
EXTRA = 0.20  # a treated one, when the effect is on, buys with this extra probability


def now() -> str:
    return pd.Timestamp.now(tz="UTC").tz_localize(None).isoformat()


def phase(
    app: TestClient, keys: dict[str, str], prefix: str, customers: int, extra: float, seed: int
) -> tuple[str, str]:
    """Ask /recommend for each new app customer, then let them buy an item they were shown
    with BASE (+ extra, when treated) probability; returns the phase's (since, until)."""
    rng = np.random.default_rng(seed)
    since = now()
    for i in range(customers):
        key = f"{prefix}-{i:05d}"
        answer = app.post(
            "/recommend", json={"customer_key": key, "channel": "app", "n": 5},
            headers=as_(keys, "recommend"),
        ).json()  # fmt: skip
        bought = BASE + (1 - BASE) * extra if answer["arm"] == "treatment" else BASE
        if rng.random() < bought:
            item = answer["items"][int(rng.integers(len(answer["items"])))]["item_id"]
            purchase(app, keys, "app", key, item, f"{prefix}-buy-{i}")
    return since, now()


def purchase(
    app: TestClient, keys: dict[str, str], channel: str, key: str, item: str, event_id: str,
    store: str | None = None,
) -> None:  # fmt: skip
    event = {
        "event_time": now(), "channel": channel, "event_type": "purchase", "item_id": item,
        "customer_key": key, "quantity": 1, "unit_price": 5.0, "event_id": event_id,
        **({"store_id": store} if store else {}),
    }  # fmt: skip
    stored = app.post("/events", json={"events": [event]}, headers=as_(keys, "recommend"))
    assert stored.json()["stored"] == 1, stored.text


def report(since: str, until: str, out: Path, mlflow_on: bool, *more: str) -> dict:
    result = omni(
        "report", "kpis", "--since", since, "--until", until, "--metrics-out", str(out),
        *([] if mlflow_on else ["--no-mlflow"]), *more,
        env={"OMNI_SALT": os.environ["OMNI_SALT"]},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    return {(row["route"], row["channel"]): row for row in rows}


def test_the_kpi_report_recovers_a_known_uplift_and_none_where_there_is_none(
    champions: Path,
    keys: dict[str, str],
    linked_keys: tuple[str, str],
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from serving.service import OmnichannelService

    monkeypatch.setenv("OMNI_EVENTS_URL", f"sqlite:///{tmp_path}/events.db")
    monkeypatch.setenv("OMNI_CONTROL_SHARE", "0.5")
    monkeypatch.setitem(OmnichannelService.config, "metrics", {"enabled": False})
    card, device = linked_keys  # one customer: a store loyalty card and an app device
    with own_service() as app:
        effect = phase(app, keys, "UP", customers=1200, extra=EXTRA, seed=7)
        none = phase(app, keys, "AA", customers=800, extra=0.0, seed=8)
        # Shown in the app, bought in a store with the loyalty card: it counts for the app.
        shown = app.post(
            "/recommend", json={"customer_key": device, "channel": "app", "n": 5},
            headers=as_(keys, "recommend"),
        ).json()  # fmt: skip
        top = shown["items"][0]
        store = next(s for s in top["available_at"] if s.startswith("S"))  # has it on the shelf
        purchase(app, keys, "store", card, top["item_id"], "cross-1", store)
        cross = (none[0], now())
        served = app.get(
            "/kpis", params={"since": effect[0], "until": effect[1]}, headers=as_(keys, "report")
        )  # also writes this worker's pending exposures
        assert served.status_code == 200, served.text
        # A dashboard asks for its panels at once: they wait their turn (they were 503s).
        ask = {"since": effect[0], "until": effect[1]}
        with ThreadPoolExecutor(4) as pool:
            panels = list(
                pool.map(
                    lambda _: app.get("/kpis", params=ask, headers=as_(keys, "report")), "abcd"
                )
            )
        assert [p.status_code for p in panels] == [200] * 4
        assert (
            app.get("/kpis", params={"since": "soon"}, headers=as_(keys, "report")).status_code
            == 422
        )
        assert (
            app.get("/kpis", params={"since": effect[0]}, headers=as_(keys, "plan")).status_code
            == 403
        )

    truth = (1 - BASE) * EXTRA  # treated minus control conversion
    measured = report(*effect, tmp_path / "effect.json", mlflow_on=True)[("recommend", "all")]
    assert measured["uplift_low"] <= truth <= measured["uplift_high"]
    assert measured["uplift_low"] > 0 and measured["control_customers"] > 400
    by_route = {(r["route"], r["channel"]): r for r in served.json()["rows"]}
    assert by_route[("recommend", "all")]["uplift"] == pytest.approx(measured["uplift"])

    placebo = report(*none, tmp_path / "none.json", mlflow_on=False)[("recommend", "all")]
    # No effect: within three standard errors of 0 (a 95% interval misses 0 one run in 20).
    standard_error = (placebo["uplift_high"] - placebo["uplift_low"]) / (2 * 1.959964)
    assert abs(placebo["uplift"]) < 3 * standard_error

    with_stock = tmp_path / "cross.json"
    app_row = report(*cross, with_stock, False, "--data", str(SAMPLE))[("recommend", "app")]
    assert app_row["cross_channel_share"] > 0  # the store purchase counted for the app's list
    stock = json.loads(with_stock.read_text())["stock"]  # the sample's stock, and that sale
    assert stock["pairs"] > 1000 and 0 < stock["stockout_share"] < 1
    assert stock["units_sold"] == 1 and stock["lost_units"] > 0

    runs = mlflow.search_runs(experiment_names=["kpis"])
    assert "metrics.recommend.all.uplift" in runs.columns


def test_the_control_arm_sees_the_popular_list_and_its_personal_list_is_recorded(
    champions: Path,
    keys: dict[str, str],
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from features.eventlog import EventLog
    from serving.service import OmnichannelService
    from tests.conftest import SAMPLE

    url = f"sqlite:///{tmp_path}/events.db"
    monkeypatch.setenv("OMNI_EVENTS_URL", url)
    monkeypatch.setenv("OMNI_CONTROL_SHARE", "0.5")
    monkeypatch.setitem(OmnichannelService.config, "metrics", {"enabled": False})
    cards = pd.read_csv(SAMPLE / "events.csv.gz", usecols=["channel", "customer_key"])
    cards = cards[cards["channel"] == "store"]["customer_key"].dropna().unique()[:40]
    answers = {}
    with own_service() as app:
        for card in cards:
            body = {"customer_key": str(card), "channel": "store", "n": 10}
            answer = app.post("/recommend", json=body, headers=as_(keys, "recommend")).json()
            answers[answer["customer_id"]] = answer
        discovery = {"customer_key": str(cards[0]), "channel": "store", "new_only": True}
        assert app.post("/recommend", json=discovery, headers=as_(keys, "recommend")).is_success
        since = pd.Timestamp.now(tz="UTC").tz_localize(None) - pd.Timedelta(hours=1)
        flushed = app.get("/kpis", params={"since": since.isoformat()}, headers=as_(keys, "report"))
        assert flushed.status_code == 200
    arms = {a["arm"] for a in answers.values()}
    assert arms == {"control", "treatment"}  # 40 customers, half and half by hash
    exposures = EventLog(url).read_exposures()
    assert exposures["route"].value_counts().to_dict() == {"recommend": 40, "recommend:new_only": 1}
    recorded = exposures[exposures["route"] == "recommend"].set_index("customer_id")["items"]
    for customer, answer in answers.items():
        shown = [item["item_id"] for item in answer["items"]]
        if answer["arm"] == "treatment":
            assert not answer["fallback"] and recorded[customer] == shown
        else:  # shown the popular list; what was recorded is the personal one it did not see
            assert answer["fallback"] and recorded[customer] != shown


def test_an_id_the_service_never_gave_is_answered_but_not_counted_as_a_customer(
    keys: dict[str, str],
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Regression: a customer_id chosen by the client (an e-mail and a phone number) was kept in
    clear in the 'pseudonymous' exposure log and counted as a customer in /kpis."""
    from features.eventlog import EventLog

    url = f"sqlite:///{tmp_path}/events.db"
    monkeypatch.setenv("OMNI_EVENTS_URL", url)
    own = {"customer_id": "alice.martin@example.com +33 6 12 34 56 78", "channel": "web"}
    with own_service() as app:
        known = app.post(
            "/recommend", json={"customer_key": "LC-00009806", "channel": "store"},
            headers=as_(keys, "recommend"),
        ).json()["customer_id"]  # fmt: skip
        for body in (own, {"customer_id": known, "channel": "web"}):
            answer = app.post("/recommend", json=body, headers=as_(keys, "recommend"))
            assert answer.status_code == 200
        since = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)).tz_localize(None)
        report = app.get("/kpis", params={"since": since.isoformat()}, headers=as_(keys, "report"))
    exposures = EventLog(url).read_exposures()
    assert len(exposures) == 3 and not exposures["customer_id"].str.contains("@").any()
    assert exposures["customer_id"].tolist().count(known) == 2  # by key, then by id
    (web,) = [
        r for r in report.json()["rows"] if (r["route"], r["channel"]) == ("recommend", "web")
    ]
    assert (web["exposures"], web["customers"]) == (2, 1)
