"""What a careless or hostile client, or a failing database, gets from the service (#11):
typed refusals with the right code, a request id on every answer, one INFO line per refusal, a
500 with its traceback logged, public API docs, and a service that outlives its event store."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from starlette.testclient import TestClient

from serving.errors import OneLine
from tests.conftest import postgres_admin, postgres_database_url
from tests.serving.conftest import as_, signed_in

pytestmark = pytest.mark.integration


@pytest.fixture
def app(client: TestClient, keys: dict[str, str]) -> Iterator[TestClient]:
    with signed_in(client, keys, "admin") as signed:
        yield signed


def test_unknown_store_or_channel_is_404_and_client_text_is_quoted(app: TestClient) -> None:
    """Regression: an unknown channel was answered 200 with "popular on <script>…"."""
    channel = app.post("/recommend", json={"customer_id": "c", "channel": "<script>x</script>"})
    assert channel.status_code == 404
    assert channel.json()["error"].startswith("Unknown channel '<script>x</script>' (known: ")
    assert "store" in channel.json()["error"]  # the channels it knows, to pick from
    store = app.post("/recommend", json={"customer_id": "c", "channel": "store", "store_id": "Z"})
    assert store.status_code == 404 and store.json()["error"] == "Unknown store 'Z'."
    known = app.post(
        "/recommend", json={"customer_id": "c", "channel": "store", "store_id": "S001"}
    )
    assert known.status_code == 200


def test_unknown_item_on_forecast_is_404(app: TestClient) -> None:
    """Regression: an unknown item was a 409."""
    body = {"store_id": "S001", "item_ids": ["NOPE"], "horizon": 1}
    response = app.post("/forecast", json=body)
    assert response.status_code == 404 and "NOPE" in response.json()["error"]


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ({"store_id": "S004", "lat": 35.0, "lon": 139.0}, "give store_id or lat and lon, not both"),
        ({"lat": 35.0}, "give lat and lon together"),
    ],
)
def test_one_place_to_look_from_on_availability(app: TestClient, where: dict, said: str) -> None:
    """Regression: with a store_id, lat and lon were passed over without a word (and a lat
    without its lon)."""
    answer = app.post("/availability", json={"item_ids": ["I000010"], **where})
    assert answer.status_code == 422 and said in answer.json()["error"], answer.json()


def test_a_body_that_is_not_json_is_400(app: TestClient) -> None:
    answer = app.post(
        "/recommend", content=b'{"channel": "app",', headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "The request body is not valid JSON."}


def test_two_keys_in_one_request_are_refused_in_the_gates_own_words(
    client: TestClient, keys: dict[str, str]
) -> None:
    """Regression: the gate's 400 was rewritten as a body that could not be read, on a GET."""
    twice = [("Authorization", f"Bearer {keys['admin']}")] * 2
    answer = client.get("/model_info", headers=twice)
    assert answer.status_code == 400
    assert answer.json() == {"error": "Send one Authorization header, not several."}
    # Two Content-Types: the gate read the last (JSON), BentoML the first and parsed a form.
    form = [
        ("Authorization", f"Bearer {keys['admin']}"),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Content-Type", "application/json"),
    ]
    answer = client.post(
        "/recommend", content=b"customer_key=LC-00009806&channel=store", headers=form
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "Send one Content-Type header, not several."}


def test_what_a_fuzzer_found_is_refused_in_one_json_sentence(app: TestClient) -> None:
    """Regression (a schemathesis run and hand-made requests): routing answered 404 and 405 in
    plain text; /readyz answered 200 to any method; window_days 1e-300 was read as 0 days and
    1_0 as 10; a time in Arabic-Indic digits was read; an unknown node_id to reserve at was a
    422 where an unknown store is a 404; an id with a space at its end was refused with the
    id pattern's regular expression."""
    nope = app.get("/nope")
    assert nope.status_code == 404 and nope.headers["content-type"] == "application/json"
    assert nope.json() == {"error": "There is no route GET '/nope'."}
    wrong = app.get("/recommend")
    assert wrong.status_code == 405 and wrong.headers["content-type"] == "application/json"
    assert wrong.json() == {"error": "'/recommend' takes POST, not 'GET'."}
    assert app.post("/readyz").status_code == 405 and app.head("/readyz").status_code == 200
    # A number out of range says the range (-1 said "is a number of days"); the rest, not.
    window = "The attribution window must be more than 0 and at most 90 days."
    number = "window_days is a number of days, e.g. 7 or 0.5."
    cases = [(d, window) for d in ("1e-300", "-1", "1e3", "90.0000001")]
    for days, said in cases + [(d, number) for d in ("1_0", "nan", "inf", "7 ")]:
        kpis = app.get("/kpis", params={"since": "2026-11-01", "window_days": days})
        assert kpis.status_code == 422 and kpis.json() == {"error": said}, days
    # Regression: a filter the route does not take was ignored (every row came back, as if
    # filtered), and a parameter given twice used the last.
    fax = app.get("/kpis", params={"since": "2026-11-01", "channel": "fax"})
    assert (
        fax.status_code == 422
        and "takes since, until and window_days, not channel" in (fax.json()["error"])
    )
    twice = app.get("/kpis?since=2026-11-01&since=2026-11-02")
    assert twice.status_code == 422 and twice.json() == {"error": "Give since once."}
    arabic = "\u0662\u0660\u0662\u0666-\u0661\u0661-\u0662\u0660"  # 2026-11-20
    digits = app.get("/kpis", params={"since": arabic, "until": "2026-11-21"})
    assert digits.status_code == 422 and "since is not an ISO time" in digits.json()["error"]
    hold = {"reservation_id": "o-1", "node_id": "S999", "item_id": "I000010", "quantity": 1}
    assert app.post("/reservations", json=hold).status_code == 404
    spaced = app.post("/reservations", json={**hold, "reservation_id": "o-1 "})
    assert spaced.status_code == 422 and "pattern" not in spaced.json()["error"]
    assert "a space at either end" in spaced.json()["error"]


def test_a_mistyped_event_is_named_by_index_and_field(app: TestClient) -> None:
    """Regression: one mistyped event refused its batch without saying which."""
    good = {"event_time": "2026-11-23T10:00:00", "channel": "web", "event_type": "view",
            "item_id": "I000020"}  # fmt: skip
    response = app.post("/events", json={"events": [good, good, {**good, "quantity": "two"}]})
    assert response.status_code == 422
    assert response.json()["error"].startswith("1 events are refused for their types")
    # As the contract's refusals: every bad event by index, one problem per field (a number
    # field was named twice, by pydantic's two number types), however many there are.
    batch = [{**good, "item_id": i, "quantity": True} for i in range(30)]
    answer = app.post("/events", json={"events": batch}).json()
    assert answer["stored"] == 0 and len(answer["rejected"]) == 30
    assert answer["rejected"][29] == {
        "index": 29,
        "reason": "item_id: Input should be a valid string; quantity: Input should be a valid "
        "number",
    }
    assert "; and 10 more." in answer["error"]


def test_ids_a_request_names_hold_no_control_or_invisible_character(app: TestClient) -> None:
    """Regression: a NUL in /recommend's customer_id was echoed and logged as an exposure (a
    row the move to PostgreSQL cannot copy); a zero-width space made another customer."""
    for customer in ("a\u0000b", "zw\u200bid"):
        answer = app.post("/recommend", json={"customer_id": customer, "channel": "web"})
        assert answer.status_code == 422 and "customer_id" in answer.json()["error"]
    key = app.post("/offers", json={"customer_key": "LC\u0007", "channel": "store"})
    assert key.status_code == 422 and "customer_key" in key.json()["error"]


def test_refusals_are_one_info_line_and_errors_carry_a_request_id(
    app: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: every 4xx was logged as an ERROR with a traceback."""
    with caplog.at_level(logging.INFO):
        refused = app.post("/recommend", json={"customer_id": "c", "channel": "app", "n": 0})
        unknown = app.post("/similar_items", json={"item_id": "NOPE"})
    assert (refused.status_code, unknown.status_code) == (422, 404)
    assert refused.headers["x-request-id"] != unknown.headers["x-request-id"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert any(unknown.headers["x-request-id"] in r.getMessage() for r in caplog.records)
    # Every refusal, not only a route's own: the key gate's, a batch's contract (regression:
    # these left only the server's access line, without reason or request id).
    caplog.clear()
    bad = {"event_time": "2026-11-23T10:00:00", "channel": "web", "event_type": "buy",
           "item_id": "I000020"}  # fmt: skip
    with caplog.at_level(logging.INFO):
        app.post("/recommend", json={}, headers={"Authorization": "", "X-Request-ID": "no-key"})
        app.post("/events", json={"events": [bad]}, headers={"X-Request-ID": "bad-type"})
    lines = [r.getMessage() for r in caplog.records if " refused " in r.getMessage()]
    assert any("refused 401 (request no-key): Missing" in line for line in lines), lines
    assert any("refused 422 (request bad-type): 1 of 1 events" in line for line in lines), lines

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("serving.service.top_for_customer", broken)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        failed = app.post(
            "/recommend",
            json={"customer_id": "c", "channel": "app"},
            headers={"X-Request-ID": "till-42"},
        )
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "till-42"
    assert "till-42" in failed.json()["error"] and "a bug" not in failed.text
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert logged and "till-42" in logged[0].getMessage()

    # The mounted GET routes too (it was a bare text/plain "Internal Server Error").
    monkeypatch.setattr("serving.service.measure", broken)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        failed = app.get("/kpis", params={"since": "2026-01-01"}, headers={"X-Request-ID": "pc-7"})
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "pc-7"
    assert failed.json() == {"error": "Internal error (request pc-7); it has been logged."}
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "pc-7" in logged[0].getMessage()  # once, with its request id


def test_api_docs_are_public_and_data_is_not(client: TestClient, keys: dict[str, str]) -> None:
    """Regression: /docs was 404 and the Swagger page needed the admin key."""
    anonymous = {"Authorization": ""}
    docs = client.get("/docs", headers=anonymous)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    policy = docs.headers["content-security-policy"]  # BentoML's page calls outside scripts
    assert policy.startswith("default-src 'self';") and "script-src" not in policy  # no inline
    assert "http" not in policy and docs.headers["x-content-type-options"] == "nosniff"
    assert client.get("/docs.json", headers=anonymous).headers["x-content-type-options"]
    assert client.get("/docs.json", headers=anonymous).status_code == 200
    assert client.post("/recommend", json={}, headers=anonymous).status_code == 401
    # What a keyed route answers holds customers' data: no proxy or browser keeps it.
    answer = client.post(
        "/recommend", json={"customer_key": "LC-00009806", "channel": "store"},
        headers={"Authorization": f"Bearer {keys['admin']}"},
    )  # fmt: skip
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    ready = client.get("/readyz", headers=anonymous)
    assert ready.status_code == 200 and ready.json()["ready"] is True


@pytest.fixture
def missing_database() -> Iterator[str]:
    """A PostgreSQL URL (with a password) whose database does not exist yet; dropped after."""
    name = f"omni_down_{uuid.uuid4().hex[:10]}"
    yield name
    with postgres_admin() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_service_outlives_its_event_store_and_never_shows_its_password(
    champions: Path,
    keys: dict[str, str],
    missing_database: str,
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: with the database unreachable at start the worker restarted in a loop, and
    the store's URL (password included) reached /admin/reload's answer and the log."""
    password = "Sup3r-Secret-pw"
    server = urlsplit(postgres_database_url(missing_database))
    login = f"{server.username or 'postgres'}:{password}@{server.hostname}:{server.port or 5432}"
    url = urlunsplit(server._replace(netloc=login))
    monkeypatch.setenv("OMNI_EVENTS_URL", url)
    monkeypatch.setattr("serving.service.LOAD_RETRY_SECONDS", 0.0)
    monkeypatch.setattr("features.eventlog.RECONNECT_SECONDS", 0.0)
    import serving.service

    loads: list[int] = []
    real_load = serving.service.load_state

    def counted_load() -> object:
        loads.append(1)
        return real_load()

    monkeypatch.setattr(serving.service, "load_state", counted_load)
    event = {"event_time": "2026-11-23T10:00:00", "channel": "web", "event_type": "view",
             "item_id": "I000020", "event_id": f"down-{uuid.uuid4().hex}"}  # fmt: skip
    with caplog.at_level(logging.INFO), own_service() as service:
        service.headers.update(as_(keys, "admin"))
        assert service.get("/livez").status_code == 200
        ready = service.get("/readyz")
        assert ready.status_code == 503 and "unavailable" in ready.json()["reason"]
        posted = service.post("/events", json={"events": [event]})
        assert posted.status_code == 503 and posted.headers["retry-after"]
        reload = service.post("/admin/reload")
        assert reload.status_code == 503
        kpis = service.get("/kpis", params={"since": "2026-11-01"})
        assert kpis.status_code == 503
        for answer in (ready, posted, kpis):  # nor the store's address, only the log has it
            assert missing_database not in answer.text and password not in answer.text
        assert password not in reload.text and "***" in reload.text  # admin: the detail
        assert f"{server.username or 'postgres'}:***@" in caplog.text
        # The database comes back: the service recovers by itself.
        with postgres_admin() as admin:
            admin.execute(f"CREATE DATABASE {missing_database}")
        assert service.get("/readyz").json()["ready"] is True
        assert service.post("/events", json={"events": [event]}).json()["stored"] == 1
    assert len(loads) == 2  # at start and by /admin/reload; the probes retried only the replay
    assert password not in caplog.text


def test_a_champion_that_answers_nothing_is_not_swapped_in(
    app: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a champion whose predictions were all NaN passed /admin/reload and served
    empty lists."""
    import pandas as pd

    from models.recommenders import Recommender

    serving = app.get("/readyz").json()["recommender_version"]
    real = Recommender.load

    def answers_nothing(path: Path) -> Recommender:
        model = real(path)
        columns = ["customer_id", "item_id", "score", "rank", "fallback"]
        model.recommend = lambda *a, **k: pd.DataFrame(columns=columns)  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(Recommender, "load", staticmethod(answers_nothing))
    reload = app.post("/admin/reload")
    assert reload.status_code == 503 and "gave no items" in reload.json()["error"]
    assert app.get("/readyz").json()["recommender_version"] == serving
    assert app.post("/recommend", json={"customer_id": "c", "channel": "app"}).json()["items"]


def test_a_reload_that_fails_says_so_in_one_line(
    app: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader's error of many lines (a server's traceback, its page) is answered by its first."""
    from models.recommenders import Recommender

    def broken(path: Path) -> Recommender:
        raise OSError("model files unreadable\n  File '/srv/internal/x.py', line 3\n<html>")

    monkeypatch.setattr(Recommender, "load", staticmethod(broken))
    reload = app.post("/admin/reload")
    assert reload.status_code == 503
    assert reload.json()["error"] == (
        "Reload failed; the previous champions keep serving: model files unreadable"
    )
    assert app.get("/readyz").json()["ready"] is True  # the previous champions


def test_a_billion_units_to_place_are_answered_at_once(app: TestClient) -> None:
    """Regression: 10^9 units grew the worker to 19.5 GB until it was killed."""
    import time

    body = {"item_id": "I000010", "units_available": 10**9, "horizon": 2}
    app.post("/placement", json=body)  # the first call builds the served forecast once
    started = time.perf_counter()
    answer = app.post("/placement", json=body)
    assert answer.status_code == 200 and time.perf_counter() - started < 1.0
    assert 0 < answer.json()["units_sent"] < 10**6  # a unit that cannot sell is not sent


def test_a_stored_event_that_breaks_the_contract_is_counted_not_fatal(app: TestClient) -> None:
    """Regression: one year-10000 event in the store made the service unloadable for good."""
    from features.eventlog import EventLog

    log = EventLog.from_env()
    with log._transaction() as cursor:  # as an older version, or a hand edit, could leave it
        cursor.execute(
            "INSERT INTO omni_events (received_at, event_time, channel, event_type, item_id, "
            "event_id) VALUES (?, ?, ?, ?, ?, ?)",
            ("now", "10000-01-01T13:59:59", "app", "view", "I000010", f"bad-{uuid.uuid4()}"),
        )
    log.close()
    assert app.post("/recommend", json={"customer_id": "c", "channel": "app"}).status_code == 200
    ready = app.get("/readyz").json()
    assert ready["ready"] is True and ready["events_quarantined"] >= 1
    assert app.post("/admin/reload").json()["reloaded"] is True  # and loads again


def test_a_reservation_id_with_an_invisible_character_is_422(app: TestClient) -> None:
    """Regression: a right-to-left override in an order number was stored and echoed back."""
    body = {"reservation_id": "order-\u202e1", "node_id": "S001", "item_id": "I000010"}
    answer = app.post("/reservations", json={**body, "quantity": 1})
    assert answer.status_code == 422 and "reservation_id" in answer.json()["error"]


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("OMNI_MAX_BODY_BYTES", "1MB", "OMNI_MAX_BODY_BYTES='1MB' is not a number of bytes"),
        ("OMNI_SAFETY_STOCK", "-3", "OMNI_SAFETY_STOCK='-3' is not a number of units"),
    ],
)
def test_a_wrong_setting_stops_the_start(
    name: str,
    value: str,
    said: str,
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: OMNI_MAX_BODY_BYTES=1MB let the service start and answer every route, /livez
    too, with a plain-text 500 and a traceback in the log per request."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(said)), own_service():
        pass


def test_a_missing_keys_file_is_said_not_silent(
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: with no keys file every key got 401, nothing was logged and /readyz said 200."""
    from serving.keys import create_key

    path = tmp_path / "keys.json"
    monkeypatch.setenv("OMNI_KEYS_FILE", str(path))
    with own_service() as app:
        ready = app.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reason"] == (
            "No API keys: the keys file is missing or empty (omni keys create makes it)."
        )  # its path only in the log: /readyz needs no key
        for _ in range(3):
            assert (
                app.post("/recommend", json={}, headers={"Authorization": "Bearer x"}).status_code
                == 401
            )
        assert caplog.text.count(f"The keys file {path} does not exist") == 1
        key = create_key(["recommend"], path)
        assert app.get("/readyz").status_code == 200
        answer = app.post(
            "/recommend", json={"customer_id": "c", "channel": "app"},
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
        assert answer.status_code == 200


def test_a_keys_file_that_cannot_be_read_is_not_ready_unless_good_keys_stay(
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Regression: a broken keys file at start left /readyz at 200 while every keyed request got
    503; one missing at start and broken later gave 401 "Invalid API key"."""
    from serving.keys import create_key

    path = tmp_path / "keys.json"
    monkeypatch.setenv("OMNI_KEYS_FILE", str(path))
    recommend = {"customer_id": "c", "channel": "app"}
    with own_service() as app:
        assert app.get("/readyz").status_code == 503  # missing
        for attempt, text in enumerate(['{"broken": ', "[1, 2"]):  # broken, and changed again
            path.write_text(text)
            os.utime(path, (attempt, attempt))  # another stamp, even within the clock's tick
            ready = app.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["reason"].startswith("The keys file cannot be read")
            refused = app.post("/recommend", json=recommend, headers={"Authorization": "Bearer x"})
            assert refused.status_code == 503, refused.text
        path.unlink()
        key = create_key(["recommend"], path)
        assert app.get("/readyz").status_code == 200
        path.write_text('{"broken": ')  # the keys read before stay in force
        os.utime(path, (9, 9))  # another stamp, even within the clock's tick
        assert app.get("/readyz").status_code == 200
        answer = app.post("/recommend", json=recommend, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200


def test_a_salt_other_than_trainings_is_not_ready_and_says_so(
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    keys: dict[str, str],
) -> None:
    """Regression: with another OMNI_SALT than training's the service was ready, and every
    customer key found no customer: popular lists for all, 404 on /offers, nothing logged."""
    trained_with = os.environ["OMNI_SALT"]
    monkeypatch.setenv("OMNI_SALT", trained_with[:-1])
    with own_service() as app:
        ready = app.get("/readyz")
        assert ready.status_code == 503
        assert "OMNI_SALT differs from the salt recommender v" in ready.json()["reason"]
        asked = app.post(
            "/recommend", json={"customer_key": "LC-00009806", "channel": "app"},
            headers=as_(keys, "recommend"),
        )  # fmt: skip
        assert asked.status_code == 503
        assert re.fullmatch(
            r"The service is not ready: the champions could not be loaded: OMNI_SALT differs "
            r"from the salt recommender v\d+ was trained with \(no customer key would find its "
            r"customer\)\. See /readyz\.",
            asked.json()["error"],
        )
    monkeypatch.setenv("OMNI_SALT", trained_with)
    with own_service() as app:
        assert app.get("/readyz").status_code == 200


def test_a_bento_needs_its_event_log_and_keys_file_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a Bento served with the defaults kept its event log inside the Bento store (a
    new, empty log for every build, deleted with it) and found no keys there."""
    from serving.settings import problems

    (tmp_path / "bento.yaml").write_text("service: serving.service:OmnichannelService\n")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")  # where bentoml serve runs a Bento
    monkeypatch.delenv("OMNI_EVENTS_URL", raising=False)
    monkeypatch.setenv("OMNI_KEYS_FILE", "/srv/omni/keys.json")
    assert problems() == [
        "A Bento needs OMNI_EVENTS_URL set: the default paths would be inside the Bento, lost "
        "with it."
    ]
    monkeypatch.setenv("OMNI_EVENTS_URL", f"sqlite:///{tmp_path}/events.db")
    assert problems() == []
    monkeypatch.chdir(tmp_path)  # from a source tree, the defaults are fine
    monkeypatch.delenv("OMNI_EVENTS_URL")
    assert problems() == []


def test_a_probe_anyone_may_call_names_no_host_or_path_of_a_failed_load(
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: /readyz, which needs no key, gave the MLflow database driver's first line
    (its host and port; a user, a database or an artifact path in other failures)."""

    def unreachable() -> None:
        raise OSError("[Errno 2] No such file or directory: '/srv/mlflow/artifacts/1/model'")

    monkeypatch.setattr("serving.service.load_state", unreachable)
    with caplog.at_level(logging.INFO), own_service() as app:
        ready = app.get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 503
    assert (
        ready.json()["reason"] == "The champions could not be loaded (the service's log says why)."
    )
    assert any("/srv/mlflow/artifacts" in r.getMessage() for r in caplog.records)  # said there


def test_a_newline_a_client_sends_forges_no_log_line(client: TestClient) -> None:
    """Regression: BentoML's access line wrote the decoded path as sent: `/x%0A2026-... [ERROR]
    ...` made a line of its own, without a key."""
    (filtered,) = [f for f in logging.getLogger("bentoml.access").filters if isinstance(f, OneLine)]
    forged = "/x\n2026-11-30T22:40:00+0000 [ERROR] FORGED\r\x1b[2J"
    record = logging.LogRecord("bentoml.access", logging.INFO, "", 0, "path=%s", (forged,), None)
    assert filtered.filter(record)
    said = record.getMessage()
    assert said == "path=/x\\n2026-11-30T22:40:00+0000 [ERROR] FORGED\\r\\u001b[2J"


def test_the_api_document_is_built_once(
    own_service: Callable[[], AbstractContextManager[TestClient]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: every anonymous /docs.json built BentoML's document again (21 ms on the
    event loop, five times a /recommend)."""
    from serving import gate

    built, original = [], gate.complete
    monkeypatch.setattr(gate, "complete", lambda spec: built.append(1) or original(spec))
    with own_service() as app:
        first, second = (app.get("/docs.json", headers={"Authorization": ""}) for _ in range(2))
    assert first.status_code == second.status_code == 200 and first.content == second.content
    assert len(built) == 1
