"""Benchmarks: measured in a fresh child process so peak RSS is the work's own."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.synthetic import GeneratorConfig

EVENTS_PER_CUSTOMER_DAY = 0.158  # measured on the generator's defaults


def machine() -> str:
    """A one-line description of the machine, for the README's Benchmarks section."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _customers_for(events: int) -> int:
    """Customers that make about ``events`` events in a generated year."""
    return max(100, round(events / (EVENTS_PER_CUSTOMER_DAY * 365)))


def ingest_config(events: int, fmt: str) -> GeneratorConfig:
    """A generator config of about ``events`` events over a year."""
    customers = _customers_for(events)
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


def run_fit_memory(model: str, customers: int, items: int, per_customer: int = 30) -> dict:
    """One recommender's fit on a random long-tailed customer x item matrix, in a child: its
    seconds and its peak memory above the matrix (one BLAS thread); then the milliseconds
    to post one purchase to it, as the service applies a batch of events
    (:func:`_posting_ms`)."""
    return _child("fit-memory", model, str(customers), str(items), str(per_customer))


def _child(task: str, *args: str | Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.runner", task, *map(str, args)],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{task} benchmark failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def recommender_config(events: int) -> GeneratorConfig:
    """About ``events`` events over a year on a 50,000-item catalogue."""
    return GeneratorConfig(
        customers=_customers_for(events),
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

    from experiments.pipelines.data import unify
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
    from experiments.pipelines.data import unify
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


def speed_panel(path: Path, series: int = 5000, days: int = 730, seed: int = 0) -> Path:
    """A daily demand panel for the speed benchmark: weekly and yearly seasonality, promotions
    with uplift, Poisson noise; 50 stores, one item per series."""
    import numpy as np
    import pandas as pd

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2023-01-01", periods=days, freq="D")
    level = rng.gamma(2.0, 2.0, series)
    weekly = 1 + 0.3 * np.sin(2 * np.pi * ds.day_of_week.to_numpy() / 7)
    yearly = 1 + 0.2 * np.cos(2 * np.pi * (ds.day_of_year.to_numpy() - 350) / 365)
    promo = rng.random((series, days)) < 0.05
    rate = level[:, None] * weekly * yearly * np.where(promo, 1.8, 1.0)
    panel = pd.DataFrame(
        {
            "unique_id": np.repeat([f"S{i % 50:02d}|I{i:05d}" for i in range(series)], days),
            "store_id": np.repeat([f"S{i % 50:02d}" for i in range(series)], days),
            "item_id": np.repeat([f"I{i:05d}" for i in range(series)], days),
            "ds": np.tile(ds, series),
            "y": rng.poisson(rate).ravel().astype(float),
            "censored": False,
            "unit_price": np.where(promo, 1.6, 2.0).ravel(),
            "on_promo": promo.ravel().astype(float),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    panel.to_parquet(path)
    return path


def run_forecaster_speed(panel_path: Path, horizon: int = 28) -> dict:
    """Feature building (ours vs mlforecast's ``preprocess``, each in a fresh process), then
    our training and prediction time."""
    import tempfile

    import pandas as pd

    from experiments.benchmarks.mlforecast_reference import (
        MLFORECAST_JOB,
        mlforecast_python,
        mlforecast_spec,
    )

    ours = _child("forecaster-features", panel_path)
    panel = pd.read_parquet(panel_path)
    spec = {**mlforecast_spec(panel, horizon, "D"), "preprocess_only": True}
    with tempfile.TemporaryDirectory() as tmp:
        history, spec_path, out = (
            Path(tmp) / "h.parquet",
            Path(tmp) / "s.json",
            Path(tmp) / "o.json",
        )
        panel[["unique_id", "ds", "y", *spec["exogenous"]]].to_parquet(history)
        spec_path.write_text(json.dumps(spec))
        python = mlforecast_python()
        subprocess.run(
            [
                str(python),
                str(MLFORECAST_JOB),
                str(history),
                str(history),
                str(spec_path),
                str(out),
            ],
            check=True,
        )
        theirs = json.loads(out.read_text())
    training = _child("forecaster-train", panel_path)
    return {
        "benchmark": "forecaster speed",
        "panel": f"{panel['unique_id'].nunique()} series x {panel['ds'].nunique()} days",
        "rows": len(panel),
        "features_seconds": ours["seconds"],
        "features_peak_rss_mb": ours["peak_rss_mb"],
        "mlforecast_preprocess_seconds": round(theirs["seconds"], 2),
        "mlforecast_peak_rss_mb": theirs["peak_rss_mb"],
        "ratio_ours_to_mlforecast": round(ours["seconds"] / theirs["seconds"], 3),
        **training,
        "machine": machine(),
    }


def _forecaster_features_worker(panel_path: Path) -> dict:
    import pandas as pd

    from features.demand import build_features
    from models.forecast import LightGBMForecaster

    panel = pd.read_parquet(panel_path)
    spec = LightGBMForecaster(
        horizon=28, freq="D"
    ).spec()  # the first lead bucket's, as mlforecast's
    started = time.perf_counter()
    features = build_features(panel, spec, freq="D")
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "columns": features.shape[1] - 2,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _forecaster_train_worker(panel_path: Path) -> dict:
    import pandas as pd

    from models.forecast import LightGBMForecaster

    panel = pd.read_parquet(panel_path)
    started = time.perf_counter()
    model = LightGBMForecaster(horizon=28, freq="D", objective="tweedie").fit(panel)
    fitted = time.perf_counter() - started
    started = time.perf_counter()
    forecast = model.predict(panel)
    predicted = time.perf_counter() - started
    return {
        "train_seconds (incl. quantile calibration)": round(fitted, 1),
        "predict_seconds": round(predicted, 1),
        "forecast_rows": len(forecast),
        "train_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_placement_speed(stores: int = 500, items: int = 10_000, seed: int = 0) -> dict:
    """Allocate every item of a chain across its stores (supply 90% of expected demand)."""
    import numpy as np

    from models.placement import allocate_many

    rng = np.random.default_rng(seed)
    mean = rng.gamma(1.5, 2.0, (items, stores))
    on_hand = rng.integers(0, 3, (items, stores))
    available = (mean.sum(axis=1) * 0.9).astype(np.int64)
    started = time.perf_counter()
    send = allocate_many(mean, 2.0, available, on_hand=on_hand, allocate_all=True)
    seconds = time.perf_counter() - started
    return {
        "benchmark": "placement speed",
        "stores": stores,
        "items": items,
        "units_allocated": int(send.sum()),
        "seconds": round(seconds, 1),
        "ms_per_item": round(1000 * seconds / items, 3),
        "machine": machine(),
    }


#: The recommenders ``omni bench fit-memory`` fits (:func:`_fit_memory_worker`).
FIT_MEMORY_MODELS = ("als", "bpr", "item_knn", "ease", "tifu_knn")


def _fit_memory_worker(model: str, customers: str, items: str, per_customer: str) -> dict:
    import numpy as np
    import pandas as pd
    import psutil
    import scipy.sparse as sp
    from threadpoolctl import threadpool_limits

    from features.interactions import Interactions
    from models.recommenders import (
        ALSRecommender,
        BPRRecommender,
        EASERecommender,
        ItemKNNRecommender,
        TIFUKNNRecommender,
    )

    n_users, n_items, per = int(customers), int(items), int(per_customer)
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8  # a long tail, as real catalogues
    rows = np.repeat(np.arange(n_users), per)
    cols = rng.choice(n_items, size=n_users * per, p=popularity / popularity.sum())
    ones = np.ones(len(rows), np.float32)
    matrix = sp.csr_matrix((ones, (rows, cols)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    interactions = Interactions(
        matrix,
        pd.Index([f"c{i}" for i in range(n_users)], dtype="str"),
        pd.Index([f"i{j}" for j in range(n_items)], dtype="str"),
    )
    models = {
        "als": lambda: ALSRecommender(iterations=5),
        "bpr": BPRRecommender,
        "item_knn": ItemKNNRecommender,
        "ease": lambda: EASERecommender(max_items=n_items),
        "tifu_knn": TIFUKNNRecommender,
    }
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        fitted = models[model]().fit(interactions)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with threadpool_limits(limits=1, user_api="blas"):
        posting = _posting_ms(fitted, n_users)
    return {
        "benchmark": f"fit memory, {model}" + (" (5 iterations)" if model == "als" else ""),
        "customers": n_users,
        "items": n_items,
        "nonzeros": int(matrix.nnz),
        "matrix_mb": (matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)
        // 1_000_000,
        "fit_seconds": round(seconds, 1),
        "peak_above_matrix_mb": round((peak - before) / 1e6),
        **posting,
        "machine": machine(),
    }


def _posting_ms(model: Any, n_users: int) -> dict:
    """Milliseconds to post one purchase (``partial_fit_users``): the first post (it builds the
    customer index, as the service's first request would), then the median and the slowest of
    ten known customers' and of ten new customers'."""
    import numpy as np
    import scipy.sparse as sp

    one = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, len(model.item_ids_)), dtype=np.float32)

    def post(customer: str) -> float:
        started = time.perf_counter()
        model.partial_fit_users([customer], one)
        return 1000 * (time.perf_counter() - started)

    first = post("c0")
    known = [post(f"c{k * (n_users // 10) + 1}") for k in range(10)]
    new = [post(f"newcomer{k}") for k in range(10)]
    return {
        "first_post_ms": round(first),
        "post_known_ms": round(float(np.median(known)), 1),
        "post_known_max_ms": round(max(known), 1),
        "post_new_ms": round(float(np.median(new)), 1),
        "post_new_max_ms": round(max(new), 1),
    }


if __name__ == "__main__":
    workers: dict[str, Callable[..., dict]] = {
        "ingest": lambda data: _ingest_worker(Path(data)),
        "recommender-speed": lambda data: _recommender_speed_worker(Path(data)),
        "forecaster-features": lambda data: _forecaster_features_worker(Path(data)),
        "forecaster-train": lambda data: _forecaster_train_worker(Path(data)),
        "fit-memory": _fit_memory_worker,
    }
    print(json.dumps(workers[sys.argv[1]](*sys.argv[2:])))
