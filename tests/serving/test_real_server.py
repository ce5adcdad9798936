"""The service as operators run it: a real ``bentoml serve`` process.

* the curl examples ``omni demo`` prints all answer 200;
* kill -9 during a stream of ``/events``: every acknowledged event is in the log (SQLite and
  PostgreSQL), and a restarted server applies them again.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from experiments.deploy import process as serve
from features.eventlog import EventLog

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TAG = "OMNI_TEST_SERVER_TAG"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(env: dict[str, str], log: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """A ``bentoml serve`` process group on a free port, ready; stopped on exit, workers included.

    Every process it starts carries a tag in its environment (inherited by the workers the
    arbiter starts in sessions of their own): none may outlive the stop.
    """
    port = free_port()
    tag = uuid.uuid4().hex
    with log.open("ab") as out:
        process = serve.start(
            port,
            env={**env, TAG: tag},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        serve.wait_ready(port, process)
        yield port, process
    finally:
        serve.stop(process)
        left = kill_tagged(tag)
    assert not left, f"processes outlived the server: {left}"


def kill_tagged(tag: str) -> list[str]:
    """Kill the live processes whose environment carries this tag; what they were."""
    left = []
    for p in psutil.process_iter(["environ", "cmdline", "status"]):
        if (p.info["environ"] or {}).get(TAG) != tag or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        left.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])}")
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return left


def post(port: int, path: str, body: dict, key: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def events_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    # A fresh schema; skipped, or under CI failed, when no server answers (tests/conftest.py).
    return str(request.getfixturevalue("postgres_url"))


def test_the_demo_curl_examples_answer(champions: Path, keys: dict[str, str], tmp_path) -> None:
    env = {**os.environ, "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db"}
    with running(env, tmp_path / "server.log") as (port, _):
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

    with running(env, tmp_path / "server.log") as (port, process):
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

    with running(env, tmp_path / "server-restarted.log") as (port, _):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(
            "GET", "/model_info", headers={"Authorization": f"Bearer {keys['plan']}"}
        )
        info = json.loads(connection.getresponse().read())
        connection.close()
    assert info["events_applied_since_load"] == stored  # replayed on start, none twice
