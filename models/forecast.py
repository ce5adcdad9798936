"""Demand forecasters: one interface, a global LightGBM model and two baselines.

``fit(panel)`` learns from a demand panel (see :mod:`features.demand`); ``predict(panel, plan)``
forecasts the ``horizon`` periods after the panel's last period, returning per series and period
the expected demand ``mean`` (the point forecast accuracy is measured on), ``p10, p50, p90``
(never crossing) and a ``method`` flag. Censored periods never enter a loss.

The LightGBM forecaster is *direct* by default: one model per bucket of leads, each reading no
lag shorter than its bucket's last lead, so no model feeds its own forecasts back and none reads
a target it could not know. Its point forecast is the mean of a Tweedie model; its P10 / P50 / P90
are calibrated on held-out history (:class:`Intervals`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

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
    category_blocks,
    extend_with_future,
    frequency,
    series_profile,
    series_sample,
    spans_a_year,
)
from models.errors import BeyondModelError, UnknownIdError

QUANTILES = (0.1, 0.5, 0.9)
FORECAST_COLUMNS = [SERIES, "store_id", "item_id", PERIOD, "mean", "p10", "p50", "p90", "method"]
_OBJECTIVES = ("tweedie", "poisson", "regression")
STRATEGIES = ("recursive", "direct")
TWEEDIE_POWER = 1.2  # the Tweedie loss's variance power: counts with many zeros
#: The shares of the rounds early stopping chooses among (see LightGBMForecaster).
ROUND_SHARES = (0.25, 0.5, 0.75, 1.0)
CATEGORICAL = ["store_code", "category_code"]
#: Rows of the panel whose features are built at once (blocks of whole categories).
_BLOCK_ROWS = 2_000_000

#: Trains one LightGBM model: ``(params, features, target, rounds) -> booster``.
Trainer = Callable[[dict[str, Any], pd.DataFrame, np.ndarray, int], lgb.Booster]


def train_here(params: dict[str, Any], x: pd.DataFrame, y: np.ndarray, rounds: int) -> lgb.Booster:
    """The default :data:`Trainer`: in this process (experiments/pipelines/distributed.py has
    one that trains on a Dask cluster)."""
    dataset = lgb.Dataset(x, label=y, categorical_feature=CATEGORICAL, free_raw_data=True)
    return lgb.train(params, dataset, num_boost_round=rounds)


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
        # By value: two categorical indexes whose codes differ in width cannot be aligned.
        point = np.repeat(mean.reindex(series.to_numpy()).fillna(0.0).to_numpy(), self.horizon)
        return _point_forecast(
            _future_frame(panel, self.horizon, self.freq), series, point, self.name
        )


#: What a planner is shown of a forecast: ``/forecast``'s rows and ``omni forecast``'s CSV.
PLANNER_COLUMNS = ["store_id", "item_id", "period_end", "mean", "p10", "p50", "p90", "method"]


def forecast_for_planners(forecast: pd.DataFrame) -> pd.DataFrame:
    """:meth:`LightGBMForecaster.forecast` in :data:`PLANNER_COLUMNS`: the period's end as an
    ISO date, the quantities as floats."""
    view = forecast.assign(period_end=pd.to_datetime(forecast[PERIOD]).dt.strftime("%Y-%m-%d"))
    view = view[PLANNER_COLUMNS]
    return view.astype({q: np.float64 for q in ("mean", "p10", "p50", "p90")})


class LightGBMForecaster(Forecaster):
    """Global LightGBM models over every series (see the module docstring).

    Series with fewer than ``min_history`` observed periods are forecast by the moving average
    and flagged ``method="moving_average (short history)"``. ``n_jobs`` are the threads of
    training (-1: every core); forecasts after fitting run on one thread, as a service's request
    threads each would otherwise start a team of their own.

    With ``strategy="direct"`` (the default) each lead bucket has its own model, which reads
    nothing more recent than the bucket's last lead (see :meth:`buckets`): a 39-week forecast is
    made by four models, for weeks 1-4, 5-13, 14-26 and 27-39, and its first 13 weeks are
    exactly a 13-week forecast's. ``strategy="recursive"`` is one model of the next period that
    reads its own forecasts for the periods after. ``quantiles`` names the interval method, or
    ``"auto"`` to choose it on held-out history (see :meth:`fit`); ``refit`` trains the models
    again on the whole panel after calibration (off: the models forecast exactly as they were
    calibrated, but the last held-out periods' sales are never learned from).
    ``calibration_effort`` is the share of ``n_estimators`` the held-out models train when they
    are refitted, at a learning rate raised in proportion (1.0: the same models as the final
    ones): they only estimate the final models' errors and choose the objective, and a quarter
    of the work estimates them as well (docs/benchmarks.md, Forecaster accuracy).
    With ``early_stopping`` each final model trains the share of ``n_estimators`` (a quarter,
    half, three quarters or all) at which its held-out model forecast the held-out periods best
    (lowest WAPE at that share of its own rounds); ``rounds_`` are the rounds each trained.
    ``max_train_rows`` bounds the rows the models learn from: a larger panel trains on whole
    series, taken in a fixed pseudo-random order (a hash of their ids) up to that many rows,
    and still forecasts every series (None: always the whole panel). Then, and for forecasts,
    features are built a block of whole categories at a time
    (:func:`features.demand.category_blocks`): exactly the whole panel's.
    """

    name = "lightgbm"

    def __init__(
        self,
        horizon: int = 28,
        freq: str = "D",
        lags: tuple[int, ...] | None = None,
        rolling: dict[int, tuple[int, ...]] | None = None,
        objective: str = "tweedie",
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        min_history: int | None = None,
        random_state: int = 0,
        n_jobs: int = -1,
        quantiles: str = "auto",
        strategy: str = "direct",
        refit: bool = True,
        calibration_effort: float = 0.25,
        early_stopping: bool = True,
        max_train_rows: int | None = 10_000_000,
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
        self.quantiles = quantiles
        self.strategy = strategy
        self.refit = refit
        self.calibration_effort = calibration_effort
        self.early_stopping = early_stopping
        self.max_train_rows = max_train_rows

    def buckets(self) -> list[int]:
        """The last lead each direct model serves, in order: the frequency's short window (4
        weeks; 7 days), its long one (13 weeks; 28 days), then one long window each, the last
        cut at the horizon."""
        spec = frequency(self.freq)
        ends = [spec.short, *range(spec.long, self.horizon + spec.long, spec.long)]
        return sorted({min(end, self.horizon) for end in ends})

    def spec(self, lead: int | None = None) -> FeatureSpec:
        """The features of the direct model whose last lead is ``lead`` (default: the first
        model's): every lag and rolling mean at least that far back."""
        lead = lead or self.models()[0]
        default = FeatureSpec.default(lead, self.freq)
        lags = sorted({max(int(k), lead) for k in self.lags}) if self.lags else default.lags
        merged: dict[int, set[int]] = {}
        for k, windows in (self.rolling or default.rolling).items():
            merged.setdefault(max(int(k), lead), set()).update(windows)
        rolling = {k: tuple(sorted(windows)) for k, windows in merged.items()}
        calendar = getattr(self, "calendar_", {}).get(lead, True)  # decided at fit
        return FeatureSpec(horizon=lead, lags=tuple(lags), rolling=rolling, calendar=calendar)

    def fit(
        self,
        panel: pd.DataFrame,
        items: pd.DataFrame | None = None,
        trainer: Trainer = train_here,
        plan: pd.DataFrame | None = None,
    ) -> Self:
        """Fit the models, and calibrate the intervals on held-out history.

        The last periods of the panel (enough for about 600 observations, at least the
        horizon — or for direct models the first bucket — and at most four times that) are held
        out: the models trained before them forecast them as they will be used (the recursive
        model from origins a horizon apart, feeding its own forecasts back), and their errors
        calibrate the intervals — per volume band of series (quintiles of recent demand) and
        lead bucket. With ``objective="auto"`` the objective with the lowest WAPE there is kept
        (tweedie, poisson or squared error; three held-out trainings instead of one). Then, with
        ``refit``, every model is trained again on the whole panel (the held-out ones then train
        ``calibration_effort`` of the rounds). When the history is too short to hold any
        periods out, a :class:`CalibrationWarning` says so and the intervals are the documented
        default (negative binomial, dispersion 1). ``trainer`` trains each LightGBM model (the
        features are built here either way): by default in this process. ``plan`` (the plan
        table: future prices, promotions, ``x_*``): its rows after the panel are kept
        (``plan_``), and forecasts use them unless given another.
        """
        self._check(panel)
        if self.quantiles not in ("auto", *INTERVAL_METHODS):
            named = ", ".join(("auto", *INTERVAL_METHODS))
            raise ValueError(f"quantiles must be one of {named}, not {self.quantiles!r}.")
        if self.objective not in ("auto", *_OBJECTIVES):
            named = ", ".join(("auto", *_OBJECTIVES))
            raise ValueError(
                f"objective must be one of {named} (the mean must be an expected value), "
                f"not {self.objective!r}."
            )
        if self.n_estimators < 1 or not self.learning_rate > 0:
            raise ValueError(
                f"n_estimators must be at least 1 and learning_rate above 0, not "
                f"{self.n_estimators!r} and {self.learning_rate!r}."
            )
        if not 0 < self.calibration_effort <= 1:
            raise ValueError(
                f"calibration_effort must be in (0, 1], not {self.calibration_effort!r}."
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}."
            )
        if self.max_train_rows is not None and self.max_train_rows < 1:
            raise ValueError(
                f"max_train_rows must be at least 1 (or None), not {self.max_train_rows!r}."
            )
        if not (panel[TARGET] > 0).any():
            raise ValueError(
                "Every period of the history has zero demand (net returns count as zero), so "
                "there is nothing to learn a forecast from."
            )
        self.items_ = items
        last = panel[PERIOD].max()
        self.plan_ = None if plan is None else plan[plan["date"] > last].reset_index(drop=True)
        self.codes_ = Codes.learn(panel, items)
        # Per model: week of year and month only where the history has seen the weeks it
        # forecasts — the same for a model whatever the horizon it is part of.
        self.calendar_ = {lead: spans_a_year(panel, lead, self.freq) for lead in self.models()}
        self.objective_ = "tweedie" if self.objective == "auto" else self.objective
        self.selection_wape_: dict[str, float] = {}
        start = self._held_out_start(panel)
        effort = self.calibration_effort if self.refit else 1.0
        kept = None if self.max_train_rows is None else series_sample(panel, self.max_train_rows)
        self.train_rows_ = len(panel) if kept is None else int(kept.sum())
        blocks = [] if kept is None else self._blocks(panel)
        held: list[pd.DataFrame] = []
        self.boosters_ = []
        for index, lead in enumerate(self.models()):
            x, y, rows, period = self._training_matrix(panel, self.spec(lead), kept, blocks)
            if len(y) < 2 * self.min_child_samples:
                sampled = "" if kept is None else f" (max_train_rows: {self.train_rows_} rows)"
                span = counted(lead, "period")
                raise ValueError(
                    f"{panel[PERIOD].nunique()} periods of history{sampled} are too few to "
                    f"forecast {span} ahead (its model reads nothing more recent than "
                    f"{span} back); the longest horizon they support is "
                    f"{self.longest_lead(panel)}."
                )
            booster, share = None, 1.0
            if start is not None:
                before = period < start
                after = ~before
                if before.sum() >= 2 * self.min_child_samples and after.any():
                    if index == 0 and self.objective == "auto":
                        share, booster, mean = self._select_objective(
                            x, y, before, after, trainer, effort
                        )
                    else:
                        held_out = self._train(
                            x[before], y[before], self.objective_, trainer, effort
                        )
                        share, booster, _, mean = self._best_cut(held_out, x[after], y[after])
                    held.append(
                        self._recursive_errors(booster, panel, start)
                        if self.strategy == "recursive"
                        else pd.DataFrame(
                            {
                                SERIES: panel[SERIES].iloc[rows[after]].to_numpy(),
                                "bucket": index,
                                "mean": mean,
                                "actual": y[after],
                            }
                        )
                    )
            if self.refit or booster is None:
                booster = self._train(x, y, self.objective_, trainer, share=share)
            self.boosters_.append(booster)
        self.leads_ = self.models()
        self.intervals_ = self._calibrate(
            pd.concat(held, ignore_index=True) if held else None, panel, start
        )
        # Enough recent history to forecast from later without the data (lags, means, median
        # price): often the whole panel, then kept without a copy (pandas copies on write).
        keep = max(self._reach(lead) for lead in self.models()) + 2 * frequency(self.freq).season
        periods = np.sort(panel[PERIOD].unique())
        self.history_ = (
            panel[panel[PERIOD] >= periods[-keep]] if len(periods) > keep else panel
        ).reset_index(drop=True)
        return self

    def _training_matrix(
        self,
        panel: pd.DataFrame,
        spec: FeatureSpec,
        kept: np.ndarray | None,
        blocks: list[np.ndarray],
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_matrix` of the rows ``kept`` (None: all, at once), the features built a
        block of whole categories at a time (``blocks``, :func:`features.demand.category_blocks`)
        and only the kept rows' features kept: what bounds the memory of a large panel."""
        if kept is None:  # every row is kept: blocks would only add a concatenation
            return self._matrix(panel, spec)
        xs, ys, rows, periods = [], [], [], []
        for block, part in _parts(panel, blocks):
            x, y, at, period = self._matrix(part, spec, kept[block])
            xs.append(x)
            ys.append(y)
            rows.append(block[at])
            periods.append(period)
        return pd.concat(xs), np.concatenate(ys), np.concatenate(rows), np.concatenate(periods)

    def _blocks(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """The frame's rows in blocks of whole categories (:data:`_BLOCK_ROWS`)."""
        return category_blocks(frame, self.items_, _BLOCK_ROWS)

    def longest_lead(self, panel: pd.DataFrame) -> int:
        """The longest lead whose model would have enough rows to train on: rows at least that
        many periods after their series' first (uncensored), at least twice min_child_samples."""
        first = panel.groupby(SERIES, observed=True)[PERIOD].transform("min")
        days = (panel[PERIOD] - first).dt.days[~panel["censored"]].to_numpy()
        offset = days // frequency(self.freq).days
        rows_from = np.cumsum(np.bincount(offset)[::-1])[::-1]  # rows at offset >= k
        return int(np.flatnonzero(rows_from >= 2 * self.min_child_samples).max(initial=0))

    def models(self) -> list[int]:
        """The last lead each model serves: one recursive model (lead 1, fed its own forecasts
        for the leads after), or one direct model per lead bucket."""
        return [1] if self.strategy == "recursive" else self.buckets()

    def _reach(self, lead: int) -> int:
        """How many periods back the features of the model for ``lead`` read."""
        spec = self.spec(lead)
        return max(*spec.lags, *(lag + max(w) for lag, w in spec.rolling.items()))

    @property
    def history_end_(self) -> pd.Timestamp:
        """The end of the last period of sales the model learned from: its forecasts follow it."""
        return pd.Timestamp(self.history_[PERIOD].max())

    @property
    def rounds_(self) -> list[int]:
        """The rounds each model trained (early stopping may have kept fewer than all)."""
        return [booster.current_iteration() for booster in self.boosters_]

    @property
    def booster_(self) -> lgb.Booster:
        """The first model."""
        return self.boosters_[0]

    def _held_out_start(self, panel: pd.DataFrame) -> np.datetime64 | None:
        """The first held-out period (see :meth:`fit`); None when the history before it would
        be shorter than three times the first bucket."""
        periods = np.sort(panel[PERIOD].unique())
        first = self.buckets()[0]
        shortest = self.horizon if self.strategy == "recursive" else first
        n_series = max(panel[SERIES].nunique(), 1)
        length = int(np.clip(np.ceil(600 / n_series), shortest, 4 * shortest))
        while length and len(periods) - length < 3 * first:
            length -= 1
        return periods[len(periods) - length] if length else None

    def _recursive_errors(
        self, booster: lgb.Booster, panel: pd.DataFrame, start: np.datetime64
    ) -> pd.DataFrame:
        """Held-out errors of the recursive model: forecasts of up to a horizon from origins a
        horizon apart, from the period before ``start`` on."""
        step = frequency(self.freq).step
        periods = np.sort(panel[PERIOD].unique())
        origins = periods[(periods >= start - step) & (periods < periods[-1])][:: self.horizon]
        frames = []
        for origin in origins:
            history = panel[panel[PERIOD] <= origin]
            actual = panel[
                (panel[PERIOD] > origin)
                & (panel[PERIOD] <= origin + step * self.horizon)
                & ~panel["censored"]
                & panel[SERIES].isin(history[SERIES])
            ]
            steps = int((actual[PERIOD].max() - origin) // step)
            plan = actual.drop(columns=[TARGET, "censored"]).rename(columns={PERIOD: "date"})
            forecast = self._recursive(booster, history, plan, steps, threads=None)
            joined = actual[[SERIES, PERIOD, TARGET]].merge(forecast, on=[SERIES, PERIOD])
            lead = ((joined[PERIOD] - origin) // step).to_numpy()
            frames.append(
                pd.DataFrame(
                    {
                        SERIES: joined[SERIES].to_numpy(),
                        "bucket": np.searchsorted(self.buckets(), lead),
                        "mean": joined["mean"].to_numpy(),
                        "actual": joined[TARGET].to_numpy(),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def _recursive(
        self,
        booster: lgb.Booster,
        panel: pd.DataFrame,
        plan: pd.DataFrame | None,
        steps: int,
        threads: int | None = 1,
    ) -> pd.DataFrame:
        """The mean forecast of ``steps`` periods after ``panel``, one step at a time, each
        step reading the forecasts before it as if they were sales."""
        step = frequency(self.freq).step
        last = panel[PERIOD].max()
        tail = panel[panel[PERIOD] > last - step * (self._reach(1) + 1)]
        extended = extend_with_future(tail, steps, self.freq, plan)
        future = extended[TARGET].isna().to_numpy()
        lead = ((extended[PERIOD] - last) // step).to_numpy()
        target = extended[TARGET].to_numpy(dtype=np.float64, copy=True)
        spec = self.spec(1)
        for block, part in _parts(extended, self._blocks(extended)):
            known = target[block]
            for h in range(1, steps + 1):
                features = build_features(
                    part.assign(**{TARGET: known}),
                    spec,
                    freq=self.freq,
                    items=self.items_,
                    codes=self.codes_,
                )
                rows = future[block] & (lead[block] == h)
                known[rows] = self._predict(
                    booster, features.drop(columns=[SERIES, PERIOD])[rows], threads
                )
            target[block] = known
        result = extended.loc[future, [SERIES, "store_id", "item_id", PERIOD]]
        return result.assign(mean=target[future]).reset_index(drop=True)

    def _matrix(
        self, panel: pd.DataFrame, spec: FeatureSpec, kept: np.ndarray | None = None
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """The rows that can train (uncensored, nearest lag known; of those ``kept``): their
        features, target, positions in ``panel`` and periods."""
        features = build_features(panel, spec, freq=self.freq, items=self.items_, codes=self.codes_)
        usable = (~panel["censored"].to_numpy(dtype=bool)) & features[
            f"lag{min(spec.lags)}"
        ].notna().to_numpy()
        rows = np.flatnonzero(usable if kept is None else usable & kept)
        x = features.drop(columns=[SERIES, PERIOD]).iloc[rows]
        return x, panel[TARGET].to_numpy(np.float64)[rows], rows, panel[PERIOD].to_numpy()[rows]

    def _select_objective(
        self, x: pd.DataFrame, y: np.ndarray, before: np.ndarray, after: np.ndarray,
        trainer: Trainer, effort: float,
    ) -> tuple[float, lgb.Booster, np.ndarray]:  # fmt: skip
        """Keep the objective with the lowest held-out WAPE (each at its best share of the
        rounds): that share, its model trained before, cut to it, and its held-out forecast."""
        cuts = {}
        for objective in _OBJECTIVES:
            booster = self._train(x[before], y[before], objective, trainer, effort)
            share, cut, self.selection_wape_[objective], mean = self._best_cut(
                booster, x[after], y[after]
            )
            cuts[objective] = (share, cut, mean)
        self.objective_ = min(self.selection_wape_, key=self.selection_wape_.__getitem__)
        return cuts[self.objective_]

    def _best_cut(
        self, booster: lgb.Booster, x: pd.DataFrame, y: np.ndarray
    ) -> tuple[float, lgb.Booster, float, np.ndarray]:
        """How well ``booster`` forecasts the held-out rows ``x`` (WAPE) at each share of its
        rounds (with ``early_stopping`` and enough rows to calibrate on; else at every round):
        the best share (the fewer rounds on a tie), the booster cut to it, its WAPE and its
        forecast of ``x``."""
        rounds = booster.current_iteration()
        shares = ROUND_SHARES if self.early_stopping and len(y) >= MIN_CELL else (1.0,)
        means = {
            kept: self._predict(booster, x, rounds=kept)
            for kept in sorted({max(round(rounds * share), 1) for share in shares})
        }
        wape = {kept: _wape(y, mean) for kept, mean in means.items()}
        kept = min(wape, key=wape.__getitem__)
        if kept < rounds:
            booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=kept))
        share = min(shares, key=lambda share: abs(share - kept / rounds))  # 12 of 50: 0.25
        return share, booster, wape[kept], means[kept]

    def _train(
        self,
        x: pd.DataFrame,
        y: np.ndarray,
        objective: str,
        trainer: Trainer,
        effort: float = 1.0,
        share: float = 1.0,
    ) -> lgb.Booster:
        """One LightGBM model of ``share`` of the rounds at the models' learning rate; with
        ``effort`` < 1 that share of them at a rate raised in proportion (to 0.5 at most,
        unless the models' own is higher)."""
        rounds = max(round(self.n_estimators * share * effort), 1)
        rate = self.learning_rate
        if effort < 1:
            rate = min(rate * self.n_estimators * share / rounds, max(rate, 0.5))
        params = {
            **self.objective_params(objective),
            "learning_rate": rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "seed": self.random_state,
            "deterministic": True,
            "num_threads": self._threads(),
            "verbose": -1,
        }
        return trainer(params, x, y, rounds)

    def objective_params(self, objective: str | None = None) -> dict[str, Any]:
        """LightGBM's parameters for an objective (default: the models' own)."""
        objective = objective or self.objective
        return {
            "objective": objective,
            **({"tweedie_variance_power": TWEEDIE_POWER} if objective == "tweedie" else {}),
        }

    def _predict(
        self,
        booster: lgb.Booster,
        x: pd.DataFrame,
        threads: int | None = None,
        rounds: int | None = None,
    ) -> np.ndarray:
        rows = x[booster.feature_name()].to_numpy()
        mean = booster.predict(rows, num_iteration=rounds, num_threads=threads or self._threads())
        return np.clip(mean, 0.0, None)

    def _calibrate(
        self, held: pd.DataFrame | None, panel: pd.DataFrame, start: np.datetime64 | None
    ) -> Intervals:
        """The interval method with the least pinball loss on the held-out errors (those of
        the periods from ``start``), the series profiled on the periods before."""
        if held is None or len(held) < MIN_CELL:
            warnings.warn(
                CalibrationWarning(
                    "The history is too short to hold periods out, so the intervals are not "
                    "calibrated: they are a negative binomial with dispersion 1 around the mean."
                ),
                stacklevel=3,
            )
            return Intervals.default()
        series = pd.Index(held[SERIES].unique())
        profile = series_profile(panel, self.freq, start, series).reindex(held[SERIES]).fillna(0.0)
        held = pd.concat([held, profile.reset_index(drop=True)], axis=1)
        methods = INTERVAL_METHODS if self.quantiles == "auto" else (self.quantiles,)
        return Intervals.calibrate(held, methods, len(self.buckets()))

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
        """Forecast the horizon after ``panel`` (default: the history kept at fit time) with the
        covariates of ``plan`` (default: the plan's future rows given at fit time)."""
        check_is_fitted(self, "boosters_")
        panel = self.history_ if panel is None else panel
        plan = self.plan_ if plan is None else plan
        if self.strategy == "recursive":
            result = self._recursive(self.boosters_[0], panel, plan, self.horizon)
        else:
            result = self._direct(panel, plan)
        result["method"] = self.name
        short = self._short_series(panel)
        if len(short):
            fallback = (
                MovingAverage(self.horizon, self.freq)
                .fit(panel)
                .predict(panel[panel[SERIES].isin(short)])
            )
            fallback["method"] = "moving_average (short history)"
            result = pd.concat(
                [result[~result[SERIES].isin(short)], fallback[result.columns]], ignore_index=True
            )
        step = frequency(self.freq).step
        lead = ((result[PERIOD] - panel[PERIOD].max()) // step).to_numpy()
        profile = series_profile(panel, self.freq).reindex(result[SERIES]).fillna(0.0)
        bucket = np.searchsorted(self.buckets(), lead)
        low, middle, high = self.intervals_.quantiles(result["mean"].to_numpy(), profile, bucket)
        result["p10"], result["p50"], result["p90"] = low, middle, high
        return result[FORECAST_COLUMNS].sort_values([SERIES, PERIOD], ignore_index=True)

    def _direct(self, panel: pd.DataFrame, plan: pd.DataFrame | None) -> pd.DataFrame:
        """The mean forecast of the horizon after ``panel``, each lead by its bucket's model,
        the features built for a block of whole categories at a time."""
        extended = extend_with_future(panel, self.horizon, self.freq, plan)
        future = extended[TARGET].isna().to_numpy()
        step = frequency(self.freq).step
        lead = ((extended[PERIOD] - panel[PERIOD].max()) // step).to_numpy()
        mean = np.zeros(len(extended))
        for block, part in _parts(extended, self._blocks(extended)):
            first = 1
            for booster, last in zip(self.boosters_, self.leads_, strict=True):
                x = build_features(
                    part, self.spec(last), freq=self.freq, items=self.items_, codes=self.codes_
                ).drop(columns=[SERIES, PERIOD])
                rows = future[block] & (lead[block] >= first) & (lead[block] <= last)
                mean[block[rows]] = self._predict(booster, x[rows], threads=1)
                first = last + 1
        result = extended.loc[future, [SERIES, "store_id", "item_id", PERIOD]]
        return result.assign(mean=mean[future]).reset_index(drop=True)

    def _short_series(self, panel: pd.DataFrame) -> pd.Index:
        needed = self.min_history or (min(self.spec().lags) + 1)
        counts = panel[~panel["censored"]].groupby(SERIES, observed=True).size()
        everything = pd.Index(panel[SERIES].unique())
        return everything.difference(counts[counts >= needed].index)

    def feature_importance(self) -> pd.Series:
        check_is_fitted(self, "boosters_")
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.booster_.feature_name()).sort_values(ascending=False)

    def checked_horizon(self, horizon: int | None) -> int:
        """``horizon`` (default: the model's own), if this model forecasts that far.

        Raises:
            BeyondModelError: for a horizon beyond the model's.
        """
        horizon = self.horizon if horizon is None else horizon
        if not 1 <= horizon <= self.horizon:
            raise BeyondModelError(
                f"horizon must be between 1 and {self.horizon} (the model's), not {horizon}."
            )
        return horizon

    def save(self, path: Path | str) -> Path:
        """LightGBM's text model plus JSON parameters: no pickle."""
        check_is_fitted(self, "boosters_")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for bucket, booster in enumerate(self.boosters_):
            booster.save_model(path / _model_file(bucket))
        params = self.get_params()
        if self.rolling:
            params["rolling"] = {str(k): list(v) for k, v in self.rolling.items()}
        meta = {
            "model": self.name,
            "params": params,
            "objective": self.objective_,
            "intervals": self.intervals_.as_dict(),
            "calendar": [self.calendar_[lead] for lead in self.leads_],
            "leads": self.leads_,
            "codes": asdict(self.codes_),
        }
        (path / "forecaster.json").write_text(json.dumps(meta, indent=2))
        if self.items_ is not None:
            self.items_.to_parquet(path / "items.parquet")
        if self.plan_ is not None:
            self.plan_.to_parquet(path / "plan.parquet")
        self.history_.to_parquet(path / "history.parquet")
        return path

    @classmethod
    def load(cls, path: Path | str) -> LightGBMForecaster:
        path = Path(path)
        meta = json.loads((path / "forecaster.json").read_text())
        params = meta["params"]
        if params.get("lags"):
            params["lags"] = tuple(params["lags"])
        if params.get("rolling"):
            params["rolling"] = {int(k): tuple(v) for k, v in params["rolling"].items()}
        model = cls(**params)
        model.leads_ = meta.get("leads", [model.horizon])  # saved before buckets: one model
        # Saved before the calendar was decided at fit: every model had it.
        calendar = meta.get("calendar", [True] * len(model.leads_))
        model.calendar_ = dict(zip(model.leads_, calendar, strict=True))
        model.boosters_ = [
            lgb.Booster(model_file=str(path / _model_file(bucket)))
            for bucket in range(len(model.leads_))
        ]
        # Saved before intervals were calibrated per band: its one dispersion.
        intervals = meta.get("intervals")
        model.intervals_ = (
            Intervals.from_dict(intervals)
            if intervals
            else Intervals(method="negative_binomial", dispersion=float(meta["dispersion"]))
        )
        model.objective_ = meta["objective"]
        items = path / "items.parquet"
        model.items_ = pd.read_parquet(items) if items.exists() else None
        plan = path / "plan.parquet"
        model.plan_ = pd.read_parquet(plan) if plan.exists() else None
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
        check_is_fitted(self, "boosters_")
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
        forecast = forecast[forecast[PERIOD] <= cut]
        if item_ids:  # the items in the order asked (each once), then by period
            asked = {item: i for i, item in enumerate(dict.fromkeys(item_ids))}
            forecast = forecast.sort_values(
                ["item_id", PERIOD], key=lambda c: c.map(asked) if c.name == "item_id" else c
            )
        return forecast.reset_index(drop=True)

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
            p10, p50, p90 = self.intervals_.quantiles(
                np.full(len(periods), mean),
                pd.DataFrame({"volume": mean, "volatility": 0.0}, index=range(len(periods))),
                np.searchsorted(self.buckets(), np.arange(1, len(periods) + 1)),
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


def _parts(
    frame: pd.DataFrame, blocks: list[np.ndarray]
) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """Each block's positions and rows, one at a time (one block: the frame itself, no copy)."""
    for block in blocks:
        yield block, frame if len(blocks) == 1 else frame.iloc[block]


class CalibrationWarning(UserWarning):
    """The intervals could not be calibrated on held-out history; the default is used."""


INTERVAL_METHODS = ("conformal", "negative_binomial")
#: How a conformal interval's errors are scaled before their quantiles are read.
SCALES = {
    "none": "1",
    "sqrt_mean": "sqrt(mean + 1)",
    "mean": "mean + 1",
    "volatility": "the series' recent volatility",
}
MIN_CELL = 30
BANDS = 5


@dataclass(frozen=True)
class Intervals:
    """P10 / P50 / P90 around a forecast mean, and how they were calibrated.

    ``conformal``: the held-out errors of the series' volume band (``edges``: quintiles of
    recent demand) and lead bucket, each divided by its ``scale`` (:data:`SCALES`), give the
    quantiles ``mean + z_q * scale`` (never below 0; split-conformal levels, so a cell with n
    errors reads its ceil((n + 1) * 0.9)-th smallest for P90). A cell with fewer than
    ``MIN_CELL`` errors uses its band over every bucket, then every error.
    ``negative_binomial``: the quantiles of a negative binomial with that mean and one
    ``dispersion`` (variance = mean + mean^2 / dispersion), the one whose P10-P90 covers 80% of
    the held-out actuals.
    """

    method: str
    dispersion: float = 1.0
    scale: str = "none"
    edges: tuple[float, ...] = ()
    table: tuple[tuple[tuple[float, float, float], ...], ...] = ()
    calibrated: bool = True
    held_out: int = 0
    pinball: dict[str, float] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Intervals:
        return cls(method="negative_binomial", dispersion=1.0, calibrated=False)

    @property
    def label(self) -> str:
        """The method, as the forecast names it."""
        if self.method == "conformal":
            return (
                f"conformal: held-out errors / {SCALES[self.scale]}, per volume band "
                f"({len(self.edges) + 1}) and lead bucket ({len(self.table)})"
            )
        state = (
            ""
            if self.calibrated
            else ", not calibrated"
            if not self.held_out
            else ", every method degenerate"
        )
        return f"negative binomial (dispersion {self.dispersion:.3g}{state})"

    def quantiles(
        self, mean: np.ndarray, profile: pd.DataFrame, bucket: np.ndarray
    ) -> list[np.ndarray]:
        """P10, P50, P90 for forecasts with this mean, series profile (``volume``,
        ``volatility``; see :func:`features.demand.series_profile`) and lead bucket (index).
        Ordered by construction: they never cross."""
        mean = np.asarray(mean, dtype=np.float64)
        if self.method != "conformal":
            return negative_binomial_quantiles(mean, self.dispersion)
        table = np.asarray(self.table)
        band = np.searchsorted(np.asarray(self.edges), profile["volume"].to_numpy(), side="right")
        z = table[np.minimum(np.asarray(bucket), len(table) - 1), band]
        scale = _scale(self.scale, mean, profile["volatility"].to_numpy())
        values = np.maximum(mean[:, None] + z * scale[:, None], 0.0)
        # Units sold are counts: no band narrower than a Poisson's spread around the same mean
        # (a slow seller's errors, near zero, would otherwise give a promotion week's 1.9 units
        # a band of 1.84-1.90).
        spread = stats.norm.ppf(QUANTILES[-1]) * np.sqrt(mean)
        low = np.minimum(values[:, 0], np.maximum(mean - spread, 0.0))
        return [low, values[:, 1], np.maximum(values[:, 2], mean + spread)]

    @classmethod
    def calibrate(
        cls,
        held: pd.DataFrame,
        methods: tuple[str, ...],
        n_buckets: int,
    ) -> Intervals:
        """The candidate with the least pinball loss on the held-out errors (``held``: series,
        bucket, mean, actual, volume, volatility), each scored cross-fitted: calibrated on half
        the series (half the rows, when too few series to halve), scored on the other half, and
        the other way round. A candidate whose P10-P90 covers less than 60% or more than 97%
        there is degenerate and left out; when every one is, a :class:`CalibrationWarning` says
        so and the intervals are the negative binomial whose P10-P90 covers 80% of the errors."""
        candidates = [
            (method, scale)
            for method in methods
            for scale in (SCALES if method == "conformal" else ("none",))
        ]
        fold = pd.util.hash_array(held[SERIES].to_numpy(dtype=object)) % 2 == 1
        if min(fold.sum(), (~fold).sum()) < MIN_CELL:  # too few series to halve: halve the rows
            fold = np.arange(len(held)) % 2 == 1
        actual = held["actual"].to_numpy()
        pinball: dict[str, float] = {}
        coverage: dict[str, float] = {}
        for method, scale in candidates:
            name = method if method != "conformal" else f"conformal/{scale}"
            loss, covered = 0.0, 0
            for part in (fold, ~fold):
                fitted = cls._fit(method, scale, held[~part], n_buckets)
                low, middle, high = fitted.quantiles(
                    held["mean"].to_numpy()[part], held[part], held["bucket"].to_numpy()[part]
                )
                loss += pinball_loss(actual[part], (low, middle, high)) * part.sum()
                covered += int(np.sum((actual[part] >= low) & (actual[part] <= high)))
            pinball[name] = loss / len(held)
            coverage[name] = covered / len(held)
        usable = [
            (candidate, name)
            for candidate, name in zip(candidates, pinball, strict=True)
            if 0.6 <= coverage[name] <= 0.97
        ]
        if not usable:
            warnings.warn(
                CalibrationWarning(
                    "Every interval method is degenerate on the held-out history (80% interval "
                    f"coverage {coverage}); the intervals are a negative binomial whose P10-P90 "
                    "covers 80% of it."
                ),
                stacklevel=4,
            )
            fallback = cls._fit("negative_binomial", "none", held, n_buckets)
            return dataclasses.replace(
                fallback, calibrated=False, held_out=len(held), pinball=pinball, coverage=coverage
            )
        (method, scale), _ = min(usable, key=lambda pair: pinball[pair[1]])
        chosen = cls._fit(method, scale, held, n_buckets)
        return dataclasses.replace(chosen, held_out=len(held), pinball=pinball, coverage=coverage)

    @classmethod
    def _fit(cls, method: str, scale: str, held: pd.DataFrame, n_buckets: int) -> Intervals:
        mean, actual = held["mean"].to_numpy(), held["actual"].to_numpy()
        if method != "conformal":
            return cls(method=method, dispersion=_calibrate_dispersion(mean, actual))
        volume, bucket = held["volume"].to_numpy(), held["bucket"].to_numpy()
        edges = tuple(float(e) for e in np.unique(np.quantile(volume, np.arange(1, BANDS) / BANDS)))
        band = np.searchsorted(np.asarray(edges), volume, side="right")
        errors = (actual - mean) / _scale(scale, mean, held["volatility"].to_numpy())
        table = []
        for b in range(n_buckets):
            # A bucket without held-out errors (too little history) reads the last one that had.
            b = min(b, int(bucket.max()))
            rows = []
            for v in range(len(edges) + 1):
                cell = errors[(bucket == b) & (band == v)]
                if len(cell) < MIN_CELL:
                    cell = errors[band == v]
                if len(cell) < MIN_CELL:
                    cell = errors
                rows.append(_conformal_quantiles(cell))
            table.append(tuple(rows))
        return cls(method=method, scale=scale, edges=edges, table=tuple(table))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Intervals:
        table = tuple(tuple(tuple(cell) for cell in row) for row in values.pop("table"))
        return cls(**{**values, "edges": tuple(values["edges"]), "table": table})


def _scale(kind: str, mean: np.ndarray, volatility: np.ndarray) -> np.ndarray:
    """The scale of each forecast's error (:data:`SCALES`); a series that has not moved lately
    still gets 5% of its mean plus one, so that no scale is zero."""
    if kind == "none":
        return np.ones_like(mean)
    if kind == "sqrt_mean":
        return np.sqrt(mean + 1.0)
    if kind == "mean":
        return mean + 1.0
    return np.maximum(volatility, 0.05 * (mean + 1.0))


def _conformal_quantiles(errors: np.ndarray) -> tuple[float, float, float]:
    """Split-conformal P10, P50, P90 of held-out errors: the floor((n + 1) q)-th and
    ceil((n + 1) q)-th order statistics, so that the interval covers at least 80%."""
    ordered = np.sort(errors)
    n = len(ordered)
    low = ordered[max(int(np.floor((n + 1) * QUANTILES[0])) - 1, 0)]
    high = ordered[min(int(np.ceil((n + 1) * QUANTILES[-1])) - 1, n - 1)]
    return float(low), float(np.median(ordered)), float(high)


def pinball_loss(actual: np.ndarray, quantiles: tuple[np.ndarray, ...]) -> float:
    """Mean pinball loss over P10, P50, P90."""
    return float(
        np.mean(
            [
                np.mean(np.maximum(q * (actual - values), (q - 1) * (actual - values)))
                for q, values in zip(QUANTILES, quantiles, strict=True)
            ]
        )
    )


def _model_file(bucket: int) -> str:
    """The first bucket's model keeps the name models were saved under before buckets."""
    return "model.txt" if bucket == 0 else f"model_{bucket}.txt"


def negative_binomial_quantiles(mean: np.ndarray, dispersion: float) -> list[np.ndarray]:
    """P10, P50, P90 of a negative binomial with this mean and size ``dispersion``
    (variance = mean + mean^2 / dispersion). Ordered by construction: they never cross."""
    mean = np.maximum(np.asarray(mean, dtype=np.float64), 1e-9)
    p = dispersion / (dispersion + mean)
    return [stats.nbinom.ppf(q, dispersion, p) for q in QUANTILES]


def _calibrate_dispersion(mean: np.ndarray, actual: np.ndarray, target: float = 0.8) -> float:
    """The dispersion whose P10-P90 interval covers ``target`` of the held-out actuals: the
    closest of 16 from 0.02 to 5,000, then of 17 between its neighbours."""
    if len(actual) == 0:
        return 1.0

    def closest(candidates: np.ndarray) -> float:
        coverage = np.array([_coverage(mean, actual, k) for k in candidates])
        return float(candidates[int(np.argmin(np.abs(coverage - target)))])

    coarse = np.geomspace(0.02, 5000.0, 16)
    best, step = closest(coarse), coarse[1] / coarse[0]
    return closest(np.clip(np.geomspace(best / step, best * step, 17), 0.02, 5000.0))


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 ("1 period", "3 windows")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _wape(actual: np.ndarray, mean: np.ndarray) -> float:
    return float(np.abs(actual - mean).sum() / max(actual.sum(), 1e-9))


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
