"""mlforecast, the reference for demand forecasting, run in its own virtual environment.

mlforecast requires pandas < 3 and this project pandas 3, so the benchmark keeps it in a separate
venv (made on first use) and talks to it through Parquet files (``mlforecast_job.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.pipelines.forecaster import DemandData
from features.demand import PERIOD, SERIES, TARGET
from models.forecast import LightGBMForecaster

MLFORECAST_VENV = Path(".omni/mlforecast-venv")
MLFORECAST_JOB = Path(__file__).with_name("mlforecast_job.py")


def mlforecast_python(venv: Path = MLFORECAST_VENV) -> Path:
    """The interpreter of the benchmark-only mlforecast environment (created on first use)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "mlforecast==1.1.0",
                "lightgbm>=4,<5",
                "pyarrow",
            ],
            check=True,
        )
    return python


def mlforecast_spec(history: pd.DataFrame, horizon: int, freq: str) -> dict:
    """mlforecast's settings: LightGBM defaults, our lags (those this history can fill, since
    mlforecast drops rows with a missing feature), rolling means, calendar and known covariates."""
    spec = LightGBMForecaster(horizon=horizon, freq=freq).spec()
    n_periods = history[PERIOD].nunique()
    last = history[PERIOD].max()
    return {
        "horizon": horizon,
        "freq": "D" if freq == "D" else f"W-{last.day_name()[:3].upper()}",
        "lags": [lag for lag in spec.lags if lag < n_periods // 2] or [horizon],
        "rolling": {str(lag): list(windows) for lag, windows in spec.rolling.items()},
        "date_features": ["month", "week"] + (["dayofweek"] if freq == "D" else []),
        "exogenous": [
            c for c in history.columns if c in ("unit_price", "on_promo") or c.startswith("x_")
        ],
    }


def mlforecast_runner(
    horizon: int, freq: str
) -> Callable[[pd.DataFrame, DemandData], pd.DataFrame]:
    """mlforecast (LightGBM, default settings) with the same lags and known covariates."""
    python = mlforecast_python()

    def run(history: pd.DataFrame, future: DemandData) -> pd.DataFrame:
        spec = mlforecast_spec(history, horizon, freq)
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
            subprocess.run(
                [str(python), str(MLFORECAST_JOB), *map(str, paths)],
                check=True,
                capture_output=True,
            )
            predicted = pd.read_parquet(paths[3])
        point = predicted["point"].clip(lower=0).to_numpy()
        out = predicted[[SERIES, PERIOD]].copy()
        out["mean"] = out["p10"] = out["p50"] = out["p90"] = point
        return out

    return run
