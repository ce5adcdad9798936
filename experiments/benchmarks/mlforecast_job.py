"""mlforecast comparison job, run by a separate interpreter that has mlforecast installed.

mlforecast requires pandas < 3, this project pandas 3, so the benchmark keeps mlforecast in its
own virtual environment (made on first use) and talks to it through Parquet files. This file
imports nothing from the project (and no project module may be named like a package it
imports: this file's folder comes first on its path).

Usage: python mlforecast_job.py HISTORY.parquet FUTURE.parquet SPEC.json OUT.parquet
"""

import json
import resource
import sys
import time
from pathlib import Path

import pandas as pd
from lightgbm import LGBMRegressor
from mlforecast import MLForecast
from mlforecast.lag_transforms import RollingMean


def main(history_path: str, future_path: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    history = pd.read_parquet(history_path)
    future = pd.read_parquet(future_path)
    exogenous = spec["exogenous"]
    forecaster = MLForecast(
        models={
            "lgbm": LGBMRegressor(
                verbosity=-1,
                random_state=0,
                n_estimators=spec.get("n_estimators", 100),
                **spec.get("lgbm_params", {}),
            )
        },
        freq=spec["freq"],
        lags=spec["lags"],
        lag_transforms={
            int(lag): [RollingMean(window_size=w) for w in windows]
            for lag, windows in spec["rolling"].items()
        },
        date_features=spec["date_features"],
    )
    if spec.get("preprocess_only"):  # the speed benchmark: time feature building alone
        started = time.perf_counter()
        features = forecaster.preprocess(
            history, id_col="unique_id", time_col="ds", target_col="y", static_features=[]
        )
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        result = {"seconds": seconds, "peak_rss_mb": peak, "shape": list(features.shape)}
        Path(out_path).write_text(json.dumps(result))
        return
    started = time.perf_counter()  # preprocess + fit, as the forecaster's fit is timed
    forecaster.fit(history, id_col="unique_id", time_col="ds", target_col="y", static_features=[])
    Path(out_path + ".seconds").write_text(str(time.perf_counter() - started))
    x_future = None
    if exogenous:
        x_future = forecaster.make_future_dataframe(h=spec["horizon"]).merge(
            future, on=["unique_id", "ds"], how="left"
        )
        x_future[exogenous] = x_future[exogenous].fillna(0.0)  # not the categorical ids
    predicted = forecaster.predict(h=spec["horizon"], X_df=x_future)
    predicted.rename(columns={"lgbm": "point"})[["unique_id", "ds", "point"]].to_parquet(out_path)


if __name__ == "__main__":
    main(*sys.argv[1:5])
