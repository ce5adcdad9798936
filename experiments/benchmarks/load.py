"""``omni bench serve``: the service against BentoML's floor, with one load generator.

The generator keeps ``concurrency`` HTTP/1.1 keep-alive connections busy for ``seconds`` (after
a warm-up), each sending its next request as soon as the last answer arrives, and records
every latency. It is hand-written on asyncio streams so that the client costs as little as
possible of the two cores it shares with the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.deploy import process as serve

Body = Callable[[int], bytes]


@dataclass
class LoadResult:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    def figures(self) -> dict[str, float]:
        lat = self.latencies_ms
        return {
            "throughput_rps": round(self.requests / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else float("nan"),
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else float("nan"),
            "errors": self.errors,
            "requests": self.requests,
        }


async def _worker(
    port: int, path: str, body: Body, headers: str, until: float, warm: float, out: list, seq: int
) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = errors = 0
    i = seq
    try:
        while (now := time.perf_counter()) < until:
            payload = body(i)
            i += 1_000_003
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if now >= warm:
                out.append((time.perf_counter() - now) * 1000)
                done += 1
                errors += status != 200
    finally:
        writer.close()
    return done, errors


def drive(
    port: int,
    path: str,
    body: Body,
    *,
    key: str | None = None,
    concurrency: int = 16,
    seconds: float = 15.0,
    warmup: float = 3.0,
    name: str = "",
) -> LoadResult:
    """Keep ``concurrency`` connections busy on ``path`` and measure after the warm-up."""
    headers = f"Authorization: Bearer {key}\r\n" if key else ""

    async def run() -> tuple[list[float], list[tuple[int, int]]]:
        start = time.perf_counter()
        warm, until = start + warmup, start + warmup + seconds
        latencies: list[float] = []
        counts = await asyncio.gather(
            *(
                _worker(port, path, body, headers, until, warm, latencies, seq)
                for seq in range(concurrency)
            )
        )
        return latencies, counts

    latencies, counts = asyncio.run(run())
    return LoadResult(
        name,
        sum(c[0] for c in counts),
        sum(c[1] for c in counts),
        seconds,
        np.asarray(latencies),
    )


def benchmark(*, concurrency: int = 16, seconds: float = 15.0) -> dict:
    """Floor /recommend, service /recommend, /availability and /events, one after another."""
    from features.identity import DEMO_SALT
    from models.recommenders import Recommender
    from serving.keys import create_key
    from serving.registry import RECOMMENDER, champion

    model = Recommender.load(champion(RECOMMENDER)[1])
    customers, items = list(model.customer_ids_[:5000]), list(model.item_ids_[:200])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "OMNI_KEYS_FILE": f"{tmp}/keys.json",
            "OMNI_EVENTS_URL": f"sqlite:///{tmp}/events.db",
            "OMNI_SALT": os.environ.get("OMNI_SALT", DEMO_SALT),
            "BENTOML_DO_NOT_TRACK": "true",
        }
        key = create_key(["recommend"], Path(f"{tmp}/keys.json"))

        def recommend(i: int) -> bytes:
            customer = customers[i % len(customers)]
            return json.dumps({"customer_id": customer, "channel": "app", "n": 10}).encode()

        def events(size: int) -> Body:
            def body(i: int) -> bytes:
                batch = [
                    {
                        "event_time": "2026-11-23T10:00:00",
                        "channel": "app",
                        "event_type": "view",
                        "item_id": "I000010",
                        "customer_key": f"DEV-BENCH-{(i * size + j) % 5000}",
                    }
                    for j in range(size)
                ]
                return json.dumps({"events": batch}).encode()

            return body

        def availability(i: int) -> bytes:  # a product page: one item, near the shopper's store
            store = f"S00{i % 5 + 1}"
            return json.dumps({"item_ids": [items[i % len(items)]], "store_id": store}).encode()

        floor_service = "experiments.benchmarks.floor_service:FloorService"
        no_log = {"OMNI_EXPOSURES": "off"}
        for name, service, path, body, auth, extra in (
            ("floor /recommend", floor_service, "/recommend", recommend, None, {}),
            ("service /recommend", serve.SERVICE, "/recommend", recommend, key, {}),
            ("service /recommend, no exposure log", serve.SERVICE, "/recommend", recommend, key,
             no_log),
            ("service /availability", serve.SERVICE, "/availability", availability, key, {}),
            ("service /events, 1 event per request", serve.SERVICE, "/events", events(1), key, {}),
            ("service /events, 100 events per request", serve.SERVICE, "/events", events(100),
             key, {}),
        ):  # fmt: skip
            port = 3900
            process = serve.start(
                port, service, env={**env, **extra}, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                serve.wait_ready(port, process)
                result = drive(
                    port, path, body, key=auth, concurrency=concurrency, seconds=seconds, name=name
                )
                results[name] = result.figures()
            finally:
                serve.stop(process)  # the workers too: they run in sessions of their own
    floor, ours = results["floor /recommend"], results["service /recommend"]
    for name, size in (("1 event", 1), ("100 events", 100)):
        row = results[f"service /events, {name} per request"]
        row["events_per_s"] = round(row["throughput_rps"] * size, 1)
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "results": results,
        "recommend_vs_floor": _against(ours, floor),
        "exposure_log": _against(ours, results["service /recommend, no exposure log"], p99=False),
        "availability_vs_floor": _against(results["service /availability"], floor),
        "events_vs_floor": _against(
            results["service /events, 1 event per request"], floor, p99=False
        ),
    }


def _against(row: dict, reference: dict, p99: bool = True) -> dict[str, float]:
    """A target's throughput (and p99) as multiples of a reference target's."""
    ratios = {"throughput_ratio": round(row["throughput_rps"] / reference["throughput_rps"], 3)}
    if p99:
        ratios["p99_ratio"] = round(row["p99_ms"] / reference["p99_ms"], 3)
    return ratios
