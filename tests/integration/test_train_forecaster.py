"""Backtest -> MLflow run with plots -> registered demand_forecaster champion -> omni forecast."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.base import clone

from experiments.pipelines.forecaster import backtest, load_demand
from experiments.pipelines.training import (
    CHAMPION,
    FORECASTER_NAME,
    _register,
    train_forecaster,
)
from models.errors import UnreadableChampion
from models.forecast import LightGBMForecaster
from serving.registry import champion
from tests.conftest import SAMPLE

pytestmark = pytest.mark.integration


def test_train_registers_a_champion_that_forecasts(own_tracking: Path) -> None:
    trained = train_forecaster(SAMPLE, horizon=4, freq="W", windows=2)
    result, version = trained.backtest, trained.version
    assert trained.champion_wape is None and trained.promoted and version == "1"  # the first
    assert trained.message.endswith("it is now champion (there was none).")
    client = MlflowClient()
    alias = client.get_model_version_by_alias(FORECASTER_NAME, CHAMPION)
    assert str(alias.version) == version and alias.tags["freq"] == "W"
    assert float(alias.tags["backtest_wape"]) == pytest.approx(result.metrics["wape"], rel=1e-5)

    runs = mlflow.search_runs(experiment_names=["demand_forecaster"])
    backtest_run = runs[runs["tags.mlflow.runName"].str.startswith("backtest")].iloc[0]
    assert {"metrics.wape", "metrics.moving_average_wape", "params.lags"} <= set(runs.columns)
    # The model's settings and what reproducing the run needs.
    settings = {"params.learning_rate", "params.num_leaves", "params.n_estimators"}
    assert settings | {"params.data_sha256", "params.code_version"} <= set(runs.columns)
    artifacts = {a.path for a in client.list_artifacts(backtest_run["run_id"])}
    assert {"forecast_vs_actual.png", "feature_importance.png", "calibration.png"} <= artifacts
    table = mlflow.artifacts.load_dict(
        f"runs:/{backtest_run['run_id']}/coverage_by_volume_quintile_and_lead.json"
    )
    assert set(table) == {f"q{q}" for q in range(1, 6)}  # as the metrics coverage_80_q1..q5
    assert set(table["q1"]) == {f"lead_{lead}" for lead in range(1, 5)}
    assert backtest_run["tags.calibration"] == "calibrated"
    assert backtest_run["params.interval"].startswith(("conformal", "negative binomial"))
    assert backtest_run["params.rounds"] == ",".join(map(str, result.model.rounds_))  # chosen
    registered = runs[runs["tags.mlflow.runName"].str.startswith("register")].iloc[0]
    assert alias.tags["interval"].startswith(("conformal", "negative binomial"))

    local = mlflow.artifacts.download_artifacts(f"models:/{FORECASTER_NAME}@{CHAMPION}")
    model = LightGBMForecaster.load(Path(local) / "artifacts" / "model")
    assert registered["params.rounds"] == ",".join(map(str, model.rounds_))  # the champion's
    assert len(model.plan_) and model.plan_["date"].min() > model.history_["ds"].max()  # the plan
    view = model.forecast("S001", horizon=2)
    assert len(view) > 0 and (view["p10"] <= view["p90"]).all()

    # Regression: a run on a sample of the data (three items of every store) replaced the
    # champion of the whole chain, which then forecast nothing else.
    sample = own_tracking / "three-items"
    sample.mkdir()
    for table in SAMPLE.glob("*.csv.gz"):
        frame = pd.read_csv(table)
        if "store_id" in frame and "item_id" in frame:
            frame = frame[frame["item_id"].isin(frame["item_id"].value_counts().index[:3])]
        frame.to_csv(sample / table.name, index=False)
    narrow = train_forecaster(sample, horizon=4, freq="W", windows=1)
    assert not narrow.promoted and narrow.champion_wape is None
    assert f"fewer than 50% of its {result.series:,}" in narrow.message, narrow.message
    assert str(client.get_model_version_by_alias(FORECASTER_NAME, CHAMPION).version) == "1"


def test_the_champion_is_rescored_on_the_candidates_data(own_tracking: Path) -> None:
    """A champion of another configuration is backtested again on the candidate's data: WAPEs
    stored from other runs measured other data."""
    data = load_demand(SAMPLE, "W")
    weak = LightGBMForecaster(horizon=4, freq="W", n_estimators=5)
    mlflow.set_experiment(FORECASTER_NAME)  # as training does before it registers
    version = _register(
        FORECASTER_NAME, "forecaster", weak.fit(data.panel, items=data.items).save,
        run_name="a weak champion", params={}, metrics={},
    )  # fmt: skip
    MlflowClient().set_registered_model_alias(FORECASTER_NAME, CHAMPION, version)
    trained = train_forecaster(SAMPLE, horizon=4, freq="W", windows=1)
    expected = backtest(data, horizon=4, freq="W", windows=1, model=lambda: clone(weak))
    assert trained.champion_wape == pytest.approx(expected.metrics["wape"])
    assert trained.champion_wape > trained.backtest.metrics["wape"]  # 5 rounds against up to 400
    assert trained.promoted and "it is now champion: WAPE" in trained.message
    # The same configuration against itself: the candidate's own WAPE, no second backtest.
    again = train_forecaster(SAMPLE, horizon=4, freq="W", windows=1)
    assert again.promoted and again.champion_wape == again.backtest.metrics["wape"]

    # Regression: a champion whose files were removed was an internal error at `omni forecast`
    # and made every training fail after its whole backtest; now training replaces it.
    client = MlflowClient()
    shutil.rmtree(client.get_model_version_download_uri(FORECASTER_NAME, again.version))
    with pytest.raises(UnreadableChampion, match=f"^The files of {FORECASTER_NAME} v"):
        champion(FORECASTER_NAME)
    mended = train_forecaster(SAMPLE, horizon=4, freq="W", windows=1)
    assert mended.promoted and "replacing one that cannot serve" in mended.message
    assert champion(FORECASTER_NAME)[0] == mended.version


def test_a_model_a_baseline_beats_is_registered_but_never_champion(own_tracking: Path) -> None:
    """Regression: one sales row of 10^12 units (inside the contract's bounds) made every
    series' forecast absurd, and the model became champion with a backtest WAPE millions of
    times the moving average's."""
    data = own_tracking / "outlier"
    shutil.copytree(SAMPLE, data)
    sales = pd.read_csv(data / "sales.csv.gz")
    late = sales.index[sales["date"] == "2024-08-20"][0]  # its lags reach the test weeks
    sales.loc[late, "units"] = 999_999_999_999
    sales.to_csv(data / "sales.csv.gz", index=False)
    trained = train_forecaster(data, horizon=4, freq="W", windows=1)
    assert not trained.promoted and trained.version == "1"
    assert "not champion (there is none): its backtest WAPE is above the" in trained.message
    with pytest.raises(mlflow.exceptions.MlflowException):  # no alias was set
        MlflowClient().get_model_version_by_alias(FORECASTER_NAME, CHAMPION)
