"""Helpers for tests that run real servers: ``bentoml serve`` on a free port until the block ends,
JSON requests to 127.0.0.1 (``/readyz`` among them), and the reaping of every process a test
started, found by a tag in its environment."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from experiments.deploy import process as serve

#: The ``omni`` command, run by this interpreter (the project as installed for the tests).
OMNI = [sys.executable, "-c", "from experiments.cli import main; main()"]

#: Set to a fresh value in the environment of the processes a test starts; their children
#: inherit it, even those started in sessions of their own. See :func:`kill_tagged`.
TAG = "OMNI_TEST_PROCESS_TAG"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(
    env: dict[str, str],
    log: Path,
    service: str = serve.SERVICE,
    timeout: float = 180,
    cwd: Path | None = None,
) -> Iterator[tuple[int, subprocess.Popen]]:
    """``bentoml serve`` of ``service`` (or a Bento's tag) on a free port, its output in ``log``;
    yields once ``/readyz`` answers 200 (else the test fails with the log's tail). Stopped on
    exit, workers included.

    Every process it starts carries a tag of its own in its environment (inherited by the workers
    the arbiter starts in sessions of their own): none may outlive the stop.
    """
    port = free_port()
    tag = uuid.uuid4().hex
    with log.open("ab") as out:
        process = serve.start(
            port,
            service,
            env={**env, TAG: tag},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            serve.wait_ready(port, process, timeout=timeout)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{tail(log)}")
        yield port, process
    finally:
        serve.stop(process)
        left = kill_tagged(tag)
    assert not left, f"processes outlived the server: {left}"


def tail(log: Path, lines: int = 40) -> str:
    """The last lines of a server's log, for a failure's message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def post(port: int, path: str, body: dict, key: str, timeout: float = 30) -> tuple[int, dict]:
    """POST ``body`` as JSON with an API key; the status and the JSON answer (``{}`` if empty)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return request(port, "POST", path, json.dumps(body), headers, timeout)


def get(port: int, path: str, key: str | None = None, timeout: float = 10) -> tuple[int, dict]:
    """GET, with an API key if given; the status and the JSON answer (``{}`` if empty)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return request(port, "GET", path, None, headers, timeout)


def readyz(port: int) -> dict:
    """The service's ``/readyz`` answer, which must be 200."""
    status, answer = get(port, "/readyz")
    assert status == 200, answer
    return answer


def request(
    port: int, method: str, path: str, body: str | None, headers: dict[str, str], timeout: float
) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def kill_tagged(tag: str) -> list[str]:
    """Kill the live processes whose environment has ``TAG`` set to ``tag``; what they were
    (pid and command line), for an assertion that none should have been left."""
    left = []
    for p in psutil.process_iter(["environ", "cmdline", "status"]):
        if (p.info["environ"] or {}).get(TAG) != tag or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        left.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])}")
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return left


def omni(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``omni`` as a user would: its exit code and its output, never raising."""
    full_env = {
        **os.environ,
        "OMNI_SALT": "cli-test-salt-of-thirty-two-characters",
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [*OMNI, *args], capture_output=True, text=True, env=full_env, check=False, timeout=300
    )
