"""Starting the BentoML service as a process, waiting for it, and the demo's curl examples."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

SERVICE = "serving.service:OmnichannelService"
REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "data_samples" / "retail"


def train_demo_models() -> tuple[str, str]:
    """Train and register both models on the committed sample (weekly forecaster, 4 weeks
    ahead); returns what each training said."""
    from experiments.pipelines import training

    recommender = training.train_recommender(DEMO_DATA).message
    forecaster = training.train_forecaster(DEMO_DATA, horizon=4, freq="W").message
    return recommender, forecaster


def serve_command(port: int, service: str = SERVICE) -> list[str]:
    """``bentoml serve`` of a service, from this interpreter's environment."""
    bentoml = Path(sys.executable).parent / "bentoml"
    return [str(bentoml), "serve", service, "--port", str(port), "--host", "127.0.0.1"]


def start(port: int, service: str = SERVICE, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(serve_command(port, service), **popen)  # type: ignore[call-overload]


def wait_ready(
    port: int, process: subprocess.Popen, timeout: float = 180.0, path: str = "/readyz"
) -> None:
    """Block until ``path`` (the service's ``/readyz`` by default) answers 200.

    Raises:
        RuntimeError: if the process exits first or the time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The process exited with code {process.returncode} at start-up.")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Port {port} did not answer {path} with 200 within {timeout:.0f} s.")


def stop(process: subprocess.Popen, *, graceful: bool = True, timeout: float = 45.0) -> None:
    """Stop a service from :func:`start` and every process under it.

    ``bentoml serve`` is an arbiter (circus) that starts each worker with ``setsid``: the workers
    live in sessions and process groups of their own, so signalling the arbiter's group misses
    them, and once the arbiter is gone nothing stops them. So the tree is read while the arbiter
    lives, and whatever in it outlives the stop is killed.

    ``graceful``: SIGTERM (to the arbiter's group when it leads one), the arbiter stops its
    workers (circus gives them 30 s), and SIGKILL for anything still running after ``timeout``
    seconds. Otherwise SIGKILL for the whole tree at once, as ``kill -9`` or a crash would; the
    arbiter is frozen (SIGSTOP) first so that it cannot start a worker while the tree is read.
    """
    import psutil

    tree: list[psutil.Process] = []
    if process.returncode is None:  # once reaped, its pid may be someone else's
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(process.pid)
            if not graceful:
                root.suspend()
            tree = [root, *root.children(recursive=True)]
    group = bool(tree) and _leads_group(process.pid)
    if graceful and tree:
        _signal(process.pid, signal.SIGTERM, group=group)
        deadline = time.monotonic() + timeout
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
    survivors = _alive(tree)
    for parent in list(survivors):  # and whatever they started meanwhile
        with contextlib.suppress(psutil.NoSuchProcess):
            survivors.extend(parent.children(recursive=True))
    if any(p.pid == process.pid for p in survivors):
        _signal(process.pid, signal.SIGKILL, group=group)
    for survivor in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()  # psutil checks that the pid was not reused
    deadline = time.monotonic() + 10
    while _alive(survivors) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.wait(timeout=10)


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, signum: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _alive(processes: list) -> list:
    """Those still running (a zombie has finished: only its exit status is left to read)."""
    import psutil

    alive = []
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def curl_examples(port: int, keys: dict[str, str], customer_key: str) -> list[str]:
    """Ready-to-paste requests for the main routes, with the demo's keys."""
    base = f"http://127.0.0.1:{port}"

    def post(route: str, scope: str, body: dict | None = None) -> str:
        data = f" -d {shlex.quote(json.dumps(body))}" if body is not None else ""
        return (
            f"curl -s -X POST {base}{route} -H 'Authorization: Bearer {keys[scope]}'"
            f" -H 'Content-Type: application/json'{data}"
        )

    now = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    purchase = {  # a purchase at the till now: newer than the sample's data, as live events are
        "event_time": now,
        "channel": "store",
        "event_type": "purchase",
        "item_id": "I000010",
        "customer_key": customer_key,
        "quantity": 1,
        "store_id": "S001",
        "event_id": f"demo-purchase-{now}",  # the till's receipt line: a retry is stored once
    }
    delivery = {  # a WMS telling the service of a delivery; its id makes a retry harmless
        "movement_time": now,
        "movement_type": "receipt",
        "node_id": "S001",
        "item_id": "I000010",
        "quantity": 12,
        "movement_id": f"demo-delivery-{now}",
    }
    order = {"reservation_id": f"demo-order-{now}", "node_id": "S001", "item_id": "I000010",
             "quantity": 1}  # fmt: skip
    return [
        f"curl -s {base}/readyz",
        post("/recommend", "recommend", {"customer_key": customer_key, "channel": "store", "n": 5}),
        post("/recommend", "recommend", {"customer_id": "new-visitor", "channel": "web", "n": 3}),
        post("/similar_items", "recommend", {"item_id": "I000010", "n": 5}),
        post("/offers", "recommend", {"customer_key": customer_key, "channel": "store", "n": 3}),
        post("/events", "recommend", {"events": [purchase]}),
        post("/movements", "stock", {"movements": [delivery]}),
        post("/availability", "recommend", {"item_ids": ["I000010"], "store_id": "S002", "n": 3}),
        post("/reservations", "stock", order),
        post("/reservations/release", "stock", {"reservation_id": order["reservation_id"]}),
        post("/forecast", "plan", {"store_id": "S001", "item_ids": ["I000010"], "horizon": 2}),
        post("/placement", "plan", {"item_id": "I000010", "units_available": 120, "horizon": 2}),
        f"curl -s {base}/model_info -H 'Authorization: Bearer {keys['plan']}'",
        f"curl -s '{base}/kpis?since={now[:10]}T00:00:00' -H 'Authorization: Bearer "
        f"{keys['report']}'",
        post("/admin/reload", "admin"),
    ]
