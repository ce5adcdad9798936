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
from typing import Any

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
    return _child("ingest", data)


def run_recommender_speed(data: Path) -> dict:
    """Time interactions, fit (ours vs implicit's raw fit) and batch recommend, in a child."""
    return _child("recommender-speed", data)


def _child(task: str, data: Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench", task, str(data)],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{task} benchmark failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def recommender_config(events: int) -> GeneratorConfig:
    """About ``events`` events over a year on a 50,000-item catalogue."""
    customers = max(100, round(events / (EVENTS_PER_CUSTOMER_DAY * 365)))
    return GeneratorConfig(
        customers=customers,
        items=50_000,
        stores=20,
        days=365,
        seed=3,
        format="parquet",
        plan_days=7,
    )


def _recommender_speed_worker(data: Path) -> dict:
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from experiments.pipelines import unify
    from features.identity import DEMO_SALT, IdentityConfig
    from features.interactions import build_interactions
    from models.recommenders import ALSRecommender

    timings = {}
    start = time.perf_counter()
    unified = unify(data, IdentityConfig(salt=DEMO_SALT)).unified
    timings["unify_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    interactions = build_interactions(unified)
    timings["build_interactions_seconds"] = time.perf_counter() - start
    params: dict[str, Any] = {
        "factors": 64,
        "regularization": 0.05,
        "alpha": 5.0,
        "iterations": 15,
        "random_state": 0,
    }
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        AlternatingLeastSquares(**params, use_gpu=False).fit(
            interactions.matrix, show_progress=False
        )
    timings["implicit_fit_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    model = ALSRecommender(**params).fit(interactions)
    timings["our_fit_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    recs = model.recommend(interactions.customer_ids, n=10)
    timings["recommend_seconds"] = time.perf_counter() - start
    users = len(interactions.customer_ids)
    return {
        "benchmark": "recommender speed (ALS, 64 factors, 15 iterations)",
        "events": len(unified),
        "customers": users,
        "items": interactions.shape[1],
        "nonzeros": int(interactions.matrix.nnz),
        **{k: round(v, 2) for k, v in timings.items()},
        "fit_ratio_ours_to_implicit": round(
            timings["our_fit_seconds"] / timings["implicit_fit_seconds"], 3
        ),
        "recommend_users_per_second": round(users / timings["recommend_seconds"]),
        "recommendations": len(recs),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "machine": machine(),
    }


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
    workers = {"ingest": _ingest_worker, "recommender-speed": _recommender_speed_worker}
    print(json.dumps(workers[sys.argv[1]](Path(sys.argv[2]))))
