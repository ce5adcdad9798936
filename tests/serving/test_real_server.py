"""The service as operators run it: a real ``bentoml serve`` process.

* the curl examples ``omni demo`` prints all answer 200;
* kill -9 during a stream of ``/events``: every acknowledged event is in the log (SQLite and
  PostgreSQL), and a restarted server applies them again.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from experiments.deploy import process as serve
from features.eventlog import EventLog
from tests.processes import get, post, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["sqlite", "postgresql"])
def events_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    # A fresh schema; skipped, or under CI failed, when no server answers (tests/conftest.py).
    return str(request.getfixturevalue("postgres_url"))


def test_the_demo_curl_examples_answer(champions: Path, keys: dict[str, str], tmp_path) -> None:
    env = {**os.environ, "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db"}
    with serving(env, tmp_path / "server.log") as (port, _):
        for example in serve.curl_examples(port, keys, customer_key="LC-00009806"):
            result = subprocess.run(
                f"{example} -o /dev/null -w '%{{http_code}}'",
                shell=True,
                capture_output=True,
                text=True,
                check=True,
            )
            assert result.stdout == "200", example
        metrics = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://127.0.0.1:{port}/metrics",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert metrics.stdout == "401"  # only admin keys may scrape metrics
        scraped = subprocess.run(
            ["curl", "-s", "-H", f"Authorization: Bearer {keys['admin']}",
             f"http://127.0.0.1:{port}/metrics"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "omni_events_quarantined" in scraped.stdout  # what /readyz counts, for Prometheus
        # Regression: BentoML leaves the root logger at WARNING, so no refusal was logged.
        status, _ = post(port, "/similar_items", {"item_id": "NOPE"}, keys["recommend"])
        assert status == 404
    assert "/similar_items refused 404 (request " in (tmp_path / "server.log").read_text()


def test_workers_stop_when_their_arbiter_is_killed(champions: Path, tmp_path: Path) -> None:
    """Regression: kill -9 of ``bentoml serve`` (or the OOM killer taking it) left its workers
    serving, orphaned, on the port a restarted service needs."""
    import psutil

    env = {**os.environ, "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db"}
    with serving(env, tmp_path / "server.log") as (port, process):
        workers = psutil.Process(process.pid).children(recursive=True)
        assert workers
        os.kill(process.pid, signal.SIGKILL)  # the arbiter alone
        process.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=45)
        assert not alive, f"{len(alive)} workers outlived their arbiter"
        with pytest.raises(OSError):  # nothing answers on the port any more
            get(port, "/livez", timeout=2)


def test_kill_9_loses_no_acknowledged_event(
    champions: Path, keys: dict[str, str], events_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "OMNI_EVENTS_URL": events_url}
    acknowledged: list[str] = []
    stop = threading.Event()

    def stream(port: int) -> None:
        batch = 0
        while not stop.is_set():
            events = [
                {
                    "event_time": "2026-11-23T10:00:00",
                    "channel": "app",
                    "event_type": "purchase",
                    "item_id": "I000010",
                    "customer_key": f"DEV-STREAM-{batch}-{i}",
                    "event_id": f"stream-{batch}-{i}",
                }
                for i in range(20)
            ]
            batch += 1
            try:
                status, body = post(port, "/events", {"events": events}, keys["recommend"])
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                continue  # the server is gone: nothing here was acknowledged
            if status == 200:
                acknowledged.extend(
                    r["event_id"] for r in body["results"] if r["status"] == "stored"
                )

    with serving(env, tmp_path / "server.log") as (port, process):
        writer = threading.Thread(target=stream, args=(port,))
        writer.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        serve.stop(process, graceful=False)  # kill -9 mid-stream: arbiter and workers at once
        time.sleep(0.5)
        stop.set()
        writer.join(timeout=30)
    assert len(acknowledged) >= 400, "the stream did not get going"

    log = EventLog(events_url)
    try:
        missing = set(acknowledged) - log.event_ids()
        stored = len(log.read())
    finally:
        log.close()
    assert not missing, f"{len(missing)} acknowledged events were lost"

    with serving(env, tmp_path / "server-restarted.log") as (port, _):
        status, info = get(port, "/model_info", keys["plan"])
    assert status == 200, info
    assert info["events_applied_since_load"] == stored  # replayed on start, none twice
