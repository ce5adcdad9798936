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
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from experiments import serve
from features.eventlog import EventLog

pytestmark = [pytest.mark.integration, pytest.mark.slow]
POSTGRES = "postgresql://127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(env: dict[str, str], log: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """A ``bentoml serve`` process group on a free port, ready; killed (group) on exit."""
    port = free_port()
    with log.open("ab") as out:
        process = serve.start(
            port, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        serve.wait_ready(port, process)
        yield port, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


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
def events_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.db"
        return
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at 127.0.0.1:5432 ({exc})")
    schema = f"omni_test_{uuid.uuid4().hex[:12]}"  # a fresh schema: nothing shared, dropped after
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


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
                    r["event_id"] for r in body["results"] if r["status"] == "accepted"
                )

    with running(env, tmp_path / "server.log") as (port, process):
        writer = threading.Thread(target=stream, args=(port,))
        writer.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # mid-stream, no warning
        process.wait(timeout=30)
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
