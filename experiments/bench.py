"""Benchmarks: measured in a fresh child process so peak RSS is the work's own."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from experiments.synthetic import GeneratorConfig

EVENTS_PER_CUSTOMER_DAY = 0.158  # measured on the generator's defaults


def machine() -> str:
    """A one-line description of the machine, for the README's Benchmarks section."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def ingest_config(events: int, fmt: str) -> GeneratorConfig:
    """A generator config of about ``events`` events over a year."""
    customers = max(100, round(events / (EVENTS_PER_CUSTOMER_DAY * 365)))
    items = int(min(100_000, max(1_000, customers // 10)))
    return GeneratorConfig(
        customers=customers, items=items, stores=50, days=365, seed=1, format=fmt, plan_days=7
    )


def run_ingest(data: Path) -> dict:
    """Run validate + unify on ``data`` in a child process; return its figures."""
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench", "ingest", str(data)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ingest benchmark failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _ingest_worker(data: Path) -> dict:
    from experiments.pipelines import unify
    from features.identity import DEMO_SALT, IdentityConfig

    start = time.perf_counter()
    result = unify(data, IdentityConfig(salt=DEMO_SALT))
    seconds = time.perf_counter() - start
    events = result.tables["events"].rows
    return {
        "benchmark": "ingest (validate + unify)",
        "data": str(data),
        "events": events,
        "identity_rows": result.tables["identities"].rows if "identities" in result.tables else 0,
        "customers": int(result.customers.shape[0]),
        "seconds": round(seconds, 2),
        "events_per_second": round(events / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "machine": machine(),
    }


if __name__ == "__main__":
    if sys.argv[1] == "ingest":
        print(json.dumps(_ingest_worker(Path(sys.argv[2]))))
