"""mlforecast, the reference for demand forecasting, run in its own virtual environment.

mlforecast requires pandas < 3 and this project pandas 3, so the benchmark keeps it in a separate
venv (made on first use) and talks to it through Parquet files (``mlforecast_job.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from experiments.pipelines.forecaster import DemandData
from features.demand import PERIOD, SERIES, TARGET, spans_a_year
from models.forecast import LightGBMForecaster

MLFORECAST_VENV = Path(".omni/mlforecast-venv")
MLFORECAST_JOB = Path(__file__).with_name("mlforecast_job.py")


#: The mlforecast environment: versions that work together (numpy as this project's lock has
#: it), pinned so that a later install cannot change the reference (pandas 2.3 broke the job's
#: filling of missing covariates). LightGBM is added as this process has it, so both sides of
#: the comparison run the same library.
MLFORECAST_STACK = (
    "mlforecast==1.1.0",
    "coreforecast==0.0.20",
    "utilsforecast==0.2.17",
    "pandas==2.3.3",
    "numpy==2.4.6",
    "pyarrow==26.0.1",
    "scikit-learn==1.9.1",
)


def mlforecast_python(venv: Path = MLFORECAST_VENV) -> Path:
    """The interpreter of the benchmark-only mlforecast environment: made on first use, and
    installed again when :data:`MLFORECAST_STACK` (or our LightGBM) has changed since it was
    last installed (``omni-requirements.txt`` in it records what was asked for)."""
    python = venv / "bin" / "python"
    wanted = [*MLFORECAST_STACK, f"lightgbm=={version('lightgbm')}"]
    installed = venv / "omni-requirements.txt"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not installed.exists() or installed.read_text().split() != wanted:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted], check=True)
        installed.write_text("\n".join(wanted) + "\n")
    return python


def mlforecast_spec(
    history: pd.DataFrame, horizon: int, freq: str, our_objective: bool = True
) -> dict:
    """mlforecast's settings: LightGBM defaults but our number of rounds and, with
    ``our_objective``, our models' objective (else LightGBM's default, squared error); our lags
    (those this history can fill, since mlforecast drops rows with a missing feature), rolling
    means, calendar and known covariates."""
    ours = LightGBMForecaster(horizon=horizon, freq=freq)
    spec = ours.spec()
    n_periods = history[PERIOD].nunique()
    last = history[PERIOD].max()
    return {
        "horizon": horizon,
        "n_estimators": ours.n_estimators,
        "lgbm_params": ours.objective_params() if our_objective else {},
        "freq": "D" if freq == "D" else f"W-{last.day_name()[:3].upper()}",
        "lags": [lag for lag in spec.lags if lag < n_periods // 2] or [horizon],
        "rolling": {str(lag): list(windows) for lag, windows in spec.rolling.items()},
        "date_features": (["month", "week"] if spans_a_year(history, horizon, freq) else [])
        + (["dayofweek"] if freq == "D" else []),
        "exogenous": [
            c for c in history.columns if c in ("unit_price", "on_promo") or c.startswith("x_")
        ],
    }


class MLForecastRunner:
    """mlforecast (LightGBM, default settings, our rounds and by default our objective) with the
    same lags and known covariates: ``runner(history, future)`` forecasts; ``fit_seconds``
    collects the time of each preprocess + fit."""

    def __init__(self, horizon: int, freq: str, our_objective: bool = True) -> None:
        self.horizon = horizon
        self.freq = freq
        self.our_objective = our_objective
        self.python = mlforecast_python()
        self.fit_seconds: list[float] = []

    def __call__(self, history: pd.DataFrame, future: DemandData) -> pd.DataFrame:
        spec = mlforecast_spec(history, self.horizon, self.freq, self.our_objective)
        columns = [SERIES, PERIOD, TARGET, *spec["exogenous"]]
        frame = history[columns].copy()
        if "unit_price" in frame:
            frame["unit_price"] = frame.groupby(SERIES)["unit_price"].ffill().bfill()
        known = future.panel[[SERIES, PERIOD, *spec["exogenous"]]].copy()
        if "unit_price" in known:
            last_price = frame.groupby(SERIES)["unit_price"].last()
            known["unit_price"] = known["unit_price"].fillna(known[SERIES].map(last_price))
        with tempfile.TemporaryDirectory() as tmp:
            paths = [
                Path(tmp) / name
                for name in ("history.parquet", "future.parquet", "spec.json", "out.parquet")
            ]
            frame.to_parquet(paths[0])
            known.to_parquet(paths[1])
            paths[2].write_text(json.dumps(spec))
            done = subprocess.run(
                [str(self.python), str(MLFORECAST_JOB), *map(str, paths)],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise RuntimeError(f"The mlforecast job failed: {done.stderr.strip()[-2000:]}")
            predicted = pd.read_parquet(paths[3])
            self.fit_seconds.append(float(Path(f"{paths[3]}.seconds").read_text()))
        point = predicted["point"].clip(lower=0).to_numpy()
        out = predicted[[SERIES, PERIOD]].copy()
        out["mean"] = out["p10"] = out["p50"] = out["p90"] = point
        return out
