"""Demand forecasters: one interface, a global LightGBM model and two baselines.

``fit(panel)`` learns from a demand panel (see :mod:`features.demand`); ``predict(panel, plan)``
forecasts the ``horizon`` periods after the panel's last period, returning per series and period
the expected demand ``mean`` (the point forecast accuracy is measured on), ``p10, p50, p90``
(never crossing) and a ``method`` flag. Censored periods never enter a loss.

The LightGBM model is *direct*: every lag it reads is at least the horizon, so one model serves
every step without feeding its own forecasts back (no recursion, no leakage). Its point forecast is
the mean of a Tweedie model; its quantiles are those of a negative binomial around that mean, with
the dispersion chosen so that 80% of a held-out window falls between P10 and P90.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar, Self

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from features.demand import (
    PERIOD,
    SERIES,
    TARGET,
    Codes,
    FeatureSpec,
    build_features,
    extend_with_future,
    frequency,
    rolling_origins,
    split_at,
)
from models.errors import BeyondModelError, UnknownIdError

QUANTILES = (0.1, 0.5, 0.9)
FORECAST_COLUMNS = [SERIES, "store_id", "item_id", PERIOD, "mean", "p10", "p50", "p90", "method"]
_OBJECTIVES = ("tweedie", "poisson", "regression")


class Forecaster(BaseEstimator):
    """Base: ``fit(panel)``, ``predict(panel, plan=None)``; the last period is the origin."""

    name: ClassVar[str] = "base"

    horizon: int
    freq: str

    def _check(self, panel: pd.DataFrame) -> None:
        frequency(self.freq)  # a ValueError names the frequencies there are
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, not {self.horizon}.")
        if panel.empty:
            raise ValueError("The demand panel is empty: there is nothing to forecast from.")


class _Baseline(Forecaster):
    """Baselines learn nothing: fitting only checks the panel."""

    def fit(self, panel: pd.DataFrame) -> Self:
        self._check(panel)
        self.fitted_ = True
        return self


class SeasonalNaive(_Baseline):
    """Each period repeats the same period one season earlier (7 days, or 52 weeks)."""

    name = "seasonal_naive"

    def __init__(self, horizon: int = 28, freq: str = "D") -> None:
        self.horizon = horizon
        self.freq = freq

    def predict(self, panel: pd.DataFrame, plan: pd.DataFrame | None = None) -> pd.DataFrame:
        check_is_fitted(self, "fitted_")
        season = frequency(self.freq).season
        future = _future_frame(panel, self.horizon, self.freq)
        history = panel.pivot_table(index=SERIES, columns=PERIOD, values=TARGET, observed=True)
        values = history.to_numpy()
        n_hist = values.shape[1]
        h = np.tile(np.arange(1, self.horizon + 1), history.shape[0])
        rows = np.repeat(np.arange(history.shape[0]), self.horizon)
        back = season * np.ceil(h / season).astype(int)
        col = n_hist - back + (h - 1)
        # Too short for a season: the last value instead.
        col = np.where(col >= 0, col, n_hist - 1)
        point = np.nan_to_num(values[rows, col])
        return _point_forecast(future, history.index, point, self.name)


class MovingAverage(_Baseline):
    """The mean of the last ``window`` uncensored periods, flat over the horizon."""

    name = "moving_average"

    def __init__(self, horizon: int = 28, freq: str = "D", window: int | None = None) -> None:
        self.horizon = horizon
        self.freq = freq
        self.window = window

    def predict(self, panel: pd.DataFrame, plan: pd.DataFrame | None = None) -> pd.DataFrame:
        check_is_fitted(self, "fitted_")
        window = self.window or frequency(self.freq).month
        observed = panel[~panel["censored"]]
        recent = observed.groupby(SERIES, observed=True).tail(window)
        mean = recent.groupby(SERIES, observed=True)[TARGET].mean()
        series = pd.Index(panel[SERIES].unique(), name=SERIES)
        point = np.repeat(mean.reindex(series).fillna(0.0).to_numpy(), self.horizon)
        return _point_forecast(
            _future_frame(panel, self.horizon, self.freq), series, point, self.name
        )


class LightGBMForecaster(Forecaster):
    """One global LightGBM model over every series (see the module docstring).

    Series with fewer than ``min_history`` observed periods are forecast by the moving average
    and flagged ``method="moving_average (short history)"``. ``n_jobs`` are the threads of
    training (-1: every core); forecasts after fitting run on one thread, as a service's request
    threads each would otherwise start a team of their own.
    """

    name = "lightgbm"

    def __init__(
        self,
        horizon: int = 28,
        freq: str = "D",
        lags: tuple[int, ...] | None = None,
        rolling: dict[int, tuple[int, ...]] | None = None,
        objective: str = "auto",
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        min_history: int | None = None,
        random_state: int = 0,
        n_jobs: int = -1,
    ) -> None:
        self.horizon = horizon
        self.freq = freq
        self.lags = lags
        self.rolling = rolling
        self.objective = objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.min_history = min_history
        self.random_state = random_state
        self.n_jobs = n_jobs

    def spec(self) -> FeatureSpec:
        default = FeatureSpec.default(self.horizon, self.freq)
        return FeatureSpec(
            horizon=self.horizon,
            lags=tuple(self.lags) if self.lags else default.lags,
            rolling={int(k): tuple(v) for k, v in (self.rolling or default.rolling).items()},
        )

    def fit(self, panel: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        """Choose the objective and calibrate the quantiles on held-out history, then fit on all.

        The last few horizons of the panel are held out (enough for about 300 observations,
        at most 4 horizons); a model trained before them forecasts each in turn from the history
        up to its origin — the way it will be used. With ``objective="auto"`` the objective with
        the lowest WAPE there is kept (tweedie, poisson or squared error); the negative-binomial
        dispersion is the one whose P10-P90 interval covers 80% of those held-out actuals.
        """
        self._check(panel)
        self.items_ = items
        self.codes_ = Codes.learn(panel, items)
        spec = self.spec()
        objectives = list(_OBJECTIVES) if self.objective == "auto" else [self.objective]
        self.objective_ = objectives[0]
        self.dispersion_ = 1.0
        held = self._held_out_blocks(panel)
        if held:
            first_origin = held[0]
            early = panel[panel[PERIOD] <= first_origin]
            scores = {}
            for objective in objectives:
                booster = self._train(early, spec, objective)
                mean, actual = self._forecast_blocks(booster, panel, held, spec)
                scores[objective] = (
                    np.abs(actual - mean).sum() / max(actual.sum(), 1e-9),
                    mean,
                    actual,
                )
            self.objective_ = min(scores, key=lambda k: scores[k][0])
            _, mean, actual = scores[self.objective_]
            self.dispersion_ = _calibrate_dispersion(mean, actual)
            self.selection_wape_ = {k: float(v[0]) for k, v in scores.items()}
        self.booster_ = self._train(panel, spec, self.objective_)
        self.feature_names_ = self.booster_.feature_name()
        # Enough recent history to forecast from later without the data (lags, means, median price).
        keep = (
            max(*spec.lags, *(lag + max(w) for lag, w in spec.rolling.items()))
            + 2 * frequency(self.freq).season
        )
        periods = np.sort(panel[PERIOD].unique())
        self.history_ = panel[panel[PERIOD] >= periods[max(len(periods) - keep, 0)]].reset_index(
            drop=True
        )
        return self

    def _held_out_blocks(self, panel: pd.DataFrame) -> list[np.datetime64]:
        """Origins of the held-out horizons, oldest first (none when history is too short)."""
        periods = np.sort(panel[PERIOD].unique())
        n_series = max(panel[SERIES].nunique(), 1)
        blocks = int(np.clip(np.ceil(300 / (n_series * self.horizon)), 1, 4))
        while blocks and len(periods) <= (blocks + 2) * self.horizon + min(self.spec().lags):
            blocks -= 1
        return rolling_origins(panel, self.horizon, blocks)

    def _forecast_blocks(
        self,
        booster: lgb.Booster,
        panel: pd.DataFrame,
        origins: list[np.datetime64],
        spec: FeatureSpec,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forecast each held-out horizon from the history up to its origin; uncensored rows."""
        means, actuals = [], []
        for origin in origins:
            history, block = split_at(panel, origin, self.horizon, self.freq)
            block = block[block[SERIES].isin(history[SERIES]) & ~block["censored"]]
            if block.empty:
                continue
            means.append(self._mean(booster, history, block, spec))
            actuals.append(block[TARGET].to_numpy())
        if not means:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(means), np.concatenate(actuals)

    def _train(self, panel: pd.DataFrame, spec: FeatureSpec, objective: str) -> lgb.Booster:
        features = build_features(panel, spec, freq=self.freq, items=self.items_, codes=self.codes_)
        usable = (~panel["censored"].to_numpy()) & features[
            f"lag{min(spec.lags)}"
        ].notna().to_numpy()
        x = features.drop(columns=[SERIES, PERIOD])[usable]
        y = panel[TARGET].to_numpy()[usable]
        params = {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "seed": self.random_state,
            "deterministic": True,
            "num_threads": self._threads(),
            "verbose": -1,
        }
        if objective == "tweedie":
            params["tweedie_variance_power"] = 1.2
        dataset = lgb.Dataset(
            x, label=y, categorical_feature=["store_code", "category_code"], free_raw_data=True
        )
        return lgb.train(params, dataset, num_boost_round=self.n_estimators)

    def _mean(
        self, booster: lgb.Booster, history: pd.DataFrame, future: pd.DataFrame, spec: FeatureSpec
    ) -> np.ndarray:
        """Mean forecast for ``future`` rows (which follow ``history``), from history only."""
        blank = future.assign(**{TARGET: np.nan})
        both = pd.concat([history, blank], ignore_index=True).sort_values(
            [SERIES, PERIOD], ignore_index=True
        )
        features = build_features(both, spec, freq=self.freq, items=self.items_, codes=self.codes_)
        keyed = features.set_index([SERIES, PERIOD]).loc[
            pd.MultiIndex.from_frame(future[[SERIES, PERIOD]])
        ]
        return np.clip(booster.predict(keyed.to_numpy(), num_threads=self._threads()), 0.0, None)

    def _threads(self) -> int:
        """LightGBM threads for training: ``n_jobs`` as scikit-learn reads it (-1: every core,
        -2: all but one, ...)."""
        if self.n_jobs == 0:
            raise ValueError("n_jobs must not be 0: -1 uses every core, 1 one thread.")
        cores = os.cpu_count() or 1
        return self.n_jobs if self.n_jobs > 0 else max(cores + 1 + self.n_jobs, 1)

    def predict(
        self, panel: pd.DataFrame | None = None, plan: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Forecast the horizon after ``panel`` (default: the history kept at fit time)."""
        check_is_fitted(self, "booster_")
        panel = self.history_ if panel is None else panel
        spec = self.spec()
        extended = extend_with_future(panel, self.horizon, self.freq, plan)
        future = extended[extended[TARGET].isna()]
        features = build_features(
            extended, spec, freq=self.freq, items=self.items_, codes=self.codes_
        )
        x = features.loc[future.index].drop(columns=[SERIES, PERIOD])
        # One thread: a service predicts on many request threads, and an OpenMP team per thread
        # beyond the cores slows every LightGBM call in the process, training included.
        rows = x[self.feature_names_].to_numpy()
        mean = np.clip(self.booster_.predict(rows, num_threads=1), 0.0, None)
        quantiles = negative_binomial_quantiles(mean, self.dispersion_)
        result = future[[SERIES, "store_id", "item_id", PERIOD]].reset_index(drop=True)
        result["mean"] = mean
        for q, values in zip(("p10", "p50", "p90"), quantiles, strict=True):
            result[q] = values
        result["method"] = self.name
        short = self._short_series(panel)
        if len(short):
            fallback = (
                MovingAverage(self.horizon, self.freq)
                .fit(panel)
                .predict(panel[panel[SERIES].isin(short)])
            )
            fallback["method"] = "moving_average (short history)"
            result = pd.concat([result[~result[SERIES].isin(short)], fallback], ignore_index=True)
        return result[FORECAST_COLUMNS].sort_values([SERIES, PERIOD], ignore_index=True)

    def _short_series(self, panel: pd.DataFrame) -> pd.Index:
        needed = self.min_history or (min(self.spec().lags) + 1)
        counts = panel[~panel["censored"]].groupby(SERIES, observed=True).size()
        everything = pd.Index(panel[SERIES].unique())
        return everything.difference(counts[counts >= needed].index)

    def feature_importance(self) -> pd.Series:
        check_is_fitted(self, "booster_")
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.feature_names_).sort_values(ascending=False)

    def checked_horizon(self, horizon: int | None) -> int:
        """``horizon`` (default: the model's own), if this model forecasts that far.

        Raises:
            BeyondModelError: for a horizon beyond the model's.
        """
        horizon = horizon or self.horizon
        if not 1 <= horizon <= self.horizon:
            raise BeyondModelError(
                f"horizon must be between 1 and {self.horizon} (the model's), not {horizon}."
            )
        return horizon

    def save(self, path: Path | str) -> Path:
        """LightGBM's text model plus JSON parameters: no pickle."""
        check_is_fitted(self, "booster_")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(path / "model.txt")
        params = {
            **self.get_params(),
            "rolling": {str(k): list(v) for k, v in self.spec().rolling.items()},
        }
        params["lags"] = list(self.spec().lags)
        meta = {
            "model": self.name,
            "params": params,
            "objective": self.objective_,
            "dispersion": self.dispersion_,
            "codes": asdict(self.codes_),
        }
        (path / "forecaster.json").write_text(json.dumps(meta, indent=2))
        if self.items_ is not None:
            self.items_.to_parquet(path / "items.parquet")
        self.history_.to_parquet(path / "history.parquet")
        return path

    @classmethod
    def load(cls, path: Path | str) -> LightGBMForecaster:
        path = Path(path)
        meta = json.loads((path / "forecaster.json").read_text())
        params = meta["params"]
        params["lags"] = tuple(params["lags"])
        params["rolling"] = {int(k): tuple(v) for k, v in params["rolling"].items()}
        model = cls(**params)
        model.booster_ = lgb.Booster(model_file=str(path / "model.txt"))
        model.feature_names_ = model.booster_.feature_name()
        model.dispersion_ = float(meta["dispersion"])
        model.objective_ = meta["objective"]
        items = path / "items.parquet"
        model.items_ = pd.read_parquet(items) if items.exists() else None
        model.history_ = pd.read_parquet(path / "history.parquet")
        # Saved before the codes were kept: those its forecasts were made with, from its history.
        codes = meta.get("codes")
        model.codes_ = (
            Codes(**{k: tuple(v) for k, v in codes.items()})
            if codes
            else Codes.learn(model.history_, model.items_)
        )
        return model

    def forecast(
        self,
        store_id: str,
        item_ids: list[str] | None = None,
        horizon: int | None = None,
        plan: pd.DataFrame | None = None,
        everything: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """A planner's view: one store, some items (default all), the first ``horizon`` periods.

        ``everything`` is ``predict(history_, plan)`` when the caller already has it (the
        service computes it once per model), so a request does not forecast the whole panel.

        Raises:
            UnknownIdError: naming the unknown store or items.
            BeyondModelError: for a horizon beyond the model's.
        """
        check_is_fitted(self, "booster_")
        horizon = self.checked_horizon(horizon)
        history = self.history_[self.history_["store_id"] == store_id]
        if history.empty:
            known = ", ".join(sorted(map(str, self.history_["store_id"].unique()))[:10])
            raise UnknownIdError(
                f"Store {store_id!r} is not in the forecaster's history (known: {known})."
            )
        new_items: list[str] = []
        if item_ids:
            new_items = sorted(set(item_ids) - set(history["item_id"]))
            history = history[history["item_id"].isin(item_ids)]
        # Features that look across series (category, item over stores) need the whole panel.
        if everything is None:
            everything = self.predict(self.history_, plan)
        forecast = everything[everything[SERIES].isin(history[SERIES])]
        if new_items:
            periods = np.sort(everything[PERIOD].unique())
            prior = self._category_prior(store_id, new_items, periods)
            forecast = pd.concat([forecast, prior], ignore_index=True)
        cut = np.sort(forecast[PERIOD].unique())[horizon - 1]
        return forecast[forecast[PERIOD] <= cut].reset_index(drop=True)

    def _category_prior(
        self, store_id: str, new_items: list[str], periods: np.ndarray
    ) -> pd.DataFrame:
        """New items: the recent mean demand per item of their category at the store, flagged."""
        category = (
            self.items_.drop_duplicates("item_id").set_index("item_id")["category"]
            if self.items_ is not None and "category" in self.items_
            else pd.Series(dtype="str")
        )
        unknown = [item for item in new_items if pd.isna(category.get(item))]
        if unknown:
            named = ", ".join(map(repr, unknown[:10]))
            raise UnknownIdError(
                f"No history and no known category for item(s) {named} "
                f"at store {store_id!r}; add them to the items table to get a category prior."
            )
        history = self.history_[self.history_["store_id"] == store_id]
        history = history[history[PERIOD] > history[PERIOD].max() - pd.Timedelta(weeks=4)]
        per_item = history[~history["censored"]].groupby("item_id", observed=True)[TARGET].mean()
        prior = per_item.groupby(per_item.index.map(category)).mean()
        rows = []
        for item in new_items:
            mean = float(prior.get(category[item], np.nan))
            if np.isnan(mean):
                raise BeyondModelError(
                    f"Store {store_id!r} has no recent sales in the category of {item!r}."
                )
            p10, p50, p90 = negative_binomial_quantiles(
                np.full(len(periods), mean), self.dispersion_
            )
            frame = pd.DataFrame({PERIOD: periods, "p10": p10, "p50": p50, "p90": p90})
            frame[SERIES], frame["store_id"], frame["item_id"] = (
                f"{store_id}|{item}",
                store_id,
                item,
            )
            frame["mean"], frame["method"] = mean, "category prior"
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)[FORECAST_COLUMNS]


def negative_binomial_quantiles(mean: np.ndarray, dispersion: float) -> list[np.ndarray]:
    """P10, P50, P90 of a negative binomial with this mean and size ``dispersion``
    (variance = mean + mean^2 / dispersion). Ordered by construction: they never cross."""
    mean = np.maximum(np.asarray(mean, dtype=np.float64), 1e-9)
    p = dispersion / (dispersion + mean)
    return [stats.nbinom.ppf(q, dispersion, p) for q in QUANTILES]


def _calibrate_dispersion(mean: np.ndarray, actual: np.ndarray, target: float = 0.8) -> float:
    """The dispersion whose P10-P90 interval covers ``target`` of the held-out actuals (closest)."""
    if len(actual) == 0:
        return 1.0
    candidates = np.geomspace(0.02, 5000.0, 160)
    coverage = [_coverage(mean, actual, k) for k in candidates]
    return float(candidates[int(np.argmin(np.abs(np.array(coverage) - target)))])


def _coverage(mean: np.ndarray, actual: np.ndarray, dispersion: float) -> float:
    """The share of ``actual`` between P10 and P90 of :func:`negative_binomial_quantiles`, read on
    the CDF (P_q is the least count whose CDF reaches q) without the far slower quantile
    function: P10 <= y <= P90 when CDF(floor y) >= 0.1 and CDF(ceil y - 1) < 0.9."""
    mean = np.maximum(np.asarray(mean, dtype=np.float64), 1e-9)
    actual = np.asarray(actual, dtype=np.float64)
    p = dispersion / (dispersion + mean)
    above_p10 = stats.nbinom.cdf(actual, dispersion, p) >= QUANTILES[0]
    below_p90 = stats.nbinom.cdf(np.ceil(actual) - 1, dispersion, p) < QUANTILES[-1]
    return float(np.mean(above_p10 & below_p90))


def _future_frame(panel: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
    """The horizon's periods for every series of the panel (no covariates)."""
    extended = extend_with_future(
        panel[[SERIES, "store_id", "item_id", PERIOD, TARGET, "censored"]], horizon, freq
    )
    return extended.loc[
        extended[TARGET].isna(), [SERIES, "store_id", "item_id", PERIOD]
    ].reset_index(drop=True)


def _point_forecast(
    future: pd.DataFrame, order: pd.Index, point: np.ndarray, method: str
) -> pd.DataFrame:
    """A point forecast with P10 = P50 = P90 (baselines state no uncertainty)."""
    frame = (
        future.set_index(SERIES).loc[order].reset_index()[[SERIES, "store_id", "item_id", PERIOD]]
    )
    frame["mean"] = frame["p10"] = frame["p50"] = frame["p90"] = point
    frame["method"] = method
    return frame[FORECAST_COLUMNS]
