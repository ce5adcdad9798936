"""``omni bench scale``: the whole pipeline on generated data — generate, validate and unify,
both training sets, both models — in this process or on a Dask cluster, with each step's time
and its peak memory summed over every process taking part (this one and its descendants, which
are a local cluster's scheduler and workers).

The training sets are the customer × item interaction matrix and the weekly store × item demand
panel built from the unified events' purchases (no stock censoring: the inventory table is left
out); the models are ALS (64 factors, 15 iterations, fitted here on either engine) and the
LightGBM forecaster, 4 weeks ahead (its models trained on the cluster with ``dask``). In
process, "validate and unify" also builds the customers table (``omni unify``'s); on the
cluster the unified events stay on the workers and no customers table is built. A cluster at
``tcp://`` is not a descendant: its memory is not counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from experiments.benchmarks.runner import ingest_config, machine
from experiments.pipelines.memory import give_back_memory
from experiments.synthetic import generate
from features.demand import SERIES
from features.identity import DEMO_SALT, IdentityConfig
from models.forecast import LightGBMForecaster, Trainer, train_here

ALS: dict[str, Any] = {
    "factors": 64, "regularization": 0.05, "alpha": 5.0, "iterations": 15, "random_state": 0,
}  # fmt: skip


#: Told each step's name and figures as it ends (a run at scale takes many minutes).
Done = Callable[[str, dict[str, float]], None]


class PeakMemory:
    """The summed RSS of this process and its descendants, sampled every ``interval`` seconds
    in a thread; :meth:`step` gives a step's peak and time."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._step = 0  # a sample taken across a step's start is not the new step's
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            step, value = self._step, self.now()
            with self._lock:
                if step == self._step:
                    self.peak = max(self.peak, value)

    @staticmethod
    def now() -> int:
        me = psutil.Process()
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # ended between the listing and the look
                continue
        return total

    @contextmanager
    def step(
        self, name: str, steps: dict[str, dict[str, float]], done: Done | None = None
    ) -> Iterator[None]:
        with self._lock:
            self._step += 1
            self.peak = self.now()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        with self._lock:
            self.peak = max(self.peak, self.now())
            steps[name] = {"seconds": round(seconds, 1), "peak_gb": round(self.peak / 1e9, 2)}
        if done:
            done(name, steps[name])


def run(events: int, engine: str, cache: Path, done: Done | None = None) -> dict[str, Any]:
    """Every step on about ``events`` generated events (reused from ``cache`` when there)."""
    config = ingest_config(events, "parquet-partitioned")
    data = cache / f"scale-{events}"
    steps: dict[str, dict[str, float]] = {}
    with PeakMemory() as memory:
        if (data / "_truth" / "corrupted_rows.json").exists():  # written last: complete
            steps["generate (reused)"] = {"seconds": 0.0, "peak_gb": 0.0}
        else:
            with memory.step("generate", steps, done):
                generate(config, data)

        @contextmanager
        def step(name: str) -> Iterator[None]:
            with memory.step(name, steps, done):
                yield
                give_back_memory()  # what the step freed, as the training pipelines do

        pipeline = _dask if engine == "dask" else _inprocess
        sizes = pipeline(data, step)
    return {
        "benchmark": f"scale, {engine}",
        "events_asked": events,
        **sizes,
        "steps": steps,
        "seconds_after_generating": round(
            sum(s["seconds"] for name, s in steps.items() if not name.startswith("generate")), 1
        ),
        "peak_gb": max(s["peak_gb"] for s in steps.values()),
        "machine": machine(),
    }


Step = Callable[[str], Any]


def _inprocess(data: Path, step: Step) -> dict[str, int]:
    from experiments.pipelines.data import unify
    from features.demand import build_panel, sales_from_events
    from features.interactions import build_interactions

    with step("validate and unify"):
        unified = unify(data, IdentityConfig(salt=DEMO_SALT)).unified
    with step("interactions"):
        interactions = build_interactions(unified)
    shape = _recommender(interactions, step)
    del interactions
    with step("demand panel"):
        panel = build_panel(sales_from_events(unified), freq="W")
    rows = len(unified)
    del unified  # the forecaster needs only the panel
    _forecaster(panel, step, train_here)
    return _sizes(rows, shape, panel)


def _dask(data: Path, step: Step) -> dict[str, int]:
    from experiments.pipelines.distributed import (
        dask_client,
        interactions_on,
        sales_on,
        trainer_on,
        unify_parts_on,
    )
    from features.demand import build_panel

    with ExitStack() as stack:
        with step("start the cluster"):
            client = stack.enter_context(dask_client())
        with step("validate and unify"):
            parts = unify_parts_on(client, data, IdentityConfig(salt=DEMO_SALT)).parts
            rows = sum(client.gather(client.map(len, parts)))
        with step("interactions"):
            interactions = interactions_on(client, parts)
        shape = _recommender(interactions, step)
        del interactions
        with step("demand panel"):
            sales = sales_on(client, parts)  # the workers drop the events
            del parts
            panel = build_panel(sales, freq="W")
            del sales
        _forecaster(panel, step, trainer_on(client))
    return _sizes(rows, shape, panel)


def _recommender(interactions: Any, step: Step) -> dict[str, int]:
    """ALS fitted on the interactions, dropped with them once fitted; the matrix's shape."""
    from threadpoolctl import threadpool_limits

    from models.recommenders import ALSRecommender

    with step("recommender (ALS)"), threadpool_limits(limits=1, user_api="blas"):
        ALSRecommender(**ALS).fit(interactions)
    return {"customers": len(interactions.customer_ids), "items": len(interactions.item_ids)}


def _forecaster(panel: Any, step: Step, trainer: Trainer) -> None:
    with step("forecaster (LightGBM)"):
        LightGBMForecaster(horizon=4, freq="W").fit(panel, trainer=trainer)


def _sizes(events: int, shape: dict[str, int], panel: Any) -> dict[str, int]:
    return {
        "events": events,
        **shape,
        "series": int(panel[SERIES].nunique()),
        "panel_rows": len(panel),
    }
