"""The demand panel and its features, declared as data.

A panel is long format: one row per series (``unique_id`` = ``store_id|item_id``) and period
(``ds``, the period's last day), with ``y`` (units), ``censored`` (the store ran out during the
period, so demand is unknown), price, promotion and every ``x_*`` covariate. Pure functions: no
I/O, inputs are not modified, deterministic output and column order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from features.schema import COVARIATE_PREFIX

SERIES = "unique_id"
PERIOD = "ds"
TARGET = "y"
SEP = "|"


@dataclass(frozen=True)
class Frequency:
    """A demand frequency: a period's length; how many periods make a season and a month."""

    days: int
    season: int  # one seasonal cycle: a week of days, a year of weeks
    month: int  # about four weeks
    short: int  # the short window of rolling means: a week of days, a month of weeks
    long: int  # the long window: four weeks of days, a quarter of weeks

    @property
    def step(self) -> np.timedelta64:
        return np.timedelta64(self.days, "D")


FREQUENCIES = {
    "D": Frequency(days=1, season=7, month=28, short=7, long=28),
    "W": Frequency(days=7, season=52, month=4, short=4, long=13),
}


def frequency(freq: str) -> Frequency:
    """The frequency ``freq`` names: "D" (daily) or "W" (weekly)."""
    if freq not in FREQUENCIES:
        raise ValueError(f"freq must be D or W, not {freq!r}.")
    return FREQUENCIES[freq]


def rolling_origins(panel: pd.DataFrame, horizon: int, windows: int) -> list[np.datetime64]:
    """The origins of a rolling backtest, oldest first: ``windows`` test windows of ``horizon``
    periods each, back to back, the last ending at the panel's last period."""
    for name, value in (("horizon", horizon), ("windows", windows)):
        if value < 1:
            raise ValueError(f"The {name} must be at least 1, not {value}.")
    periods = np.sort(panel[PERIOD].unique())
    if len(periods) < horizon * windows + 2:  # at least two periods of history before the first
        longest = max((len(periods) - 2) // windows, 0)
        raise ValueError(
            f"{len(periods)} periods are too few for {windows} backtest windows of {horizon}: "
            f"the longest horizon they allow for {windows} windows is {longest}."
        )
    return [periods[len(periods) - horizon * w - 1] for w in range(windows, 0, -1)]


def silent_stretches(
    panel: pd.DataFrame, at_least: int = 3
) -> list[tuple[pd.Timestamp, pd.Timestamp, int]]:
    """Runs of at least ``at_least`` consecutive periods in which nothing sold anywhere — in a
    chain, missing data far more often than no demand (the panel reads them as zero sales):
    ``(first period, last period, periods)`` each, oldest first."""
    sold = panel.groupby(PERIOD, observed=True)[TARGET].sum().sort_index()
    silent = (sold <= 0).to_numpy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    runs = zip(edges[::2], edges[1::2], strict=True)
    return [(sold.index[a], sold.index[b - 1], int(b - a)) for a, b in runs if b - a >= at_least]


def split_at(
    panel: pd.DataFrame, origin: np.datetime64, horizon: int, freq: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The history up to ``origin`` (included) and the ``horizon`` periods after it."""
    history = panel[panel[PERIOD] <= origin]
    end = origin + frequency(freq).step * horizon
    return history, panel[(panel[PERIOD] > origin) & (panel[PERIOD] <= end)]


def series_profile(
    panel: pd.DataFrame,
    freq: str,
    before: np.datetime64 | None = None,
    series: pd.Index | None = None,
) -> pd.DataFrame:
    """Per series (of ``series`` only, when given), over its observed periods in the last
    quarter (13 weeks, 28 days) of the panel or of its periods ``before`` one: ``volume``, the
    mean demand, and ``volatility``, the mean absolute change from one period to the next (the
    scale of MASE). Indexed by series id (plain values, so that any frame's series can be
    looked up in it); a series with one such period has volatility 0."""
    spec = frequency(freq)
    period = panel[PERIOD]
    end = period.max() if before is None else period[period < before].max()
    rows = (period > end - spec.step * spec.long) & (period <= end) & ~panel["censored"]
    if series is not None:
        rows &= panel[SERIES].isin(series)
    recent = panel[rows].sort_values([SERIES, PERIOD])
    grouped = recent.groupby(SERIES, observed=True)[TARGET]
    change = grouped.diff().abs()
    profile = pd.DataFrame(
        {
            "volume": grouped.mean(),
            "volatility": change.groupby(recent[SERIES], observed=True).mean().fillna(0.0),
        }
    )
    # Not categorical: two categorical indexes whose codes differ in width cannot be aligned
    # (an empty group's are a byte wide), and a forecast's series would not be found in it.
    return profile.set_axis(pd.Index(profile.index.to_numpy(), name=SERIES))


def spans_a_year(panel: pd.DataFrame, horizon: int, freq: str) -> bool:
    """Whether the panel spans more than a year and a horizon: only then has its history seen
    the weeks a forecast covers, so that week of the year and month can mean something (before,
    trees extrapolate them from other weeks)."""
    days = frequency(freq).days
    return bool(panel[PERIOD].nunique() * days > 365 + horizon * days)


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to build (logged verbatim as parameters).

    Lags are in periods and must all be >= ``horizon`` (the last lead its model serves): a
    forecast made at the origin never reads a target it could not know.

    Attributes:
        horizon: periods ahead.
        lags: target lags.
        rolling: lag -> windows for rolling means of the target ending at that lag.
        calendar: week of the year and month as features (a model should read them only when
            its history holds the weeks it forecasts: more than a year).
    """

    horizon: int
    lags: tuple[int, ...]
    rolling: dict[int, tuple[int, ...]] = field(default_factory=dict)
    calendar: bool = True

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, not {self.horizon}.")
        too_short = [lag for lag in (*self.lags, *self.rolling) if lag < self.horizon]
        if too_short:
            raise ValueError(
                f"lags {too_short} are shorter than the horizon {self.horizon}: they would leak."
            )

    @classmethod
    def default(cls, horizon: int, freq: str) -> FeatureSpec:
        """Lags at the horizon and one season back; rolling means of a month and a quarter."""
        spec = frequency(freq)
        season, short, long_ = spec.season, spec.short, spec.long
        lags = sorted(
            {horizon, horizon + 1, horizon + 2, max(horizon, season), max(horizon, 2 * season)}
        )
        return cls(horizon=horizon, lags=tuple(lags), rolling={horizon: (short, long_)})

    def as_params(self) -> dict[str, str | int]:
        return {
            "horizon": self.horizon,
            "lags": ",".join(map(str, self.lags)),
            "rolling": ";".join(
                f"{k}:{','.join(map(str, v))}" for k, v in sorted(self.rolling.items())
            ),
            "calendar": int(self.calendar),
        }


def period_end(dates: pd.Series, freq: str, last: pd.Timestamp) -> pd.Series:
    """The last day of each date's period. Weekly periods end on ``last``'s weekday, so the final
    period of the data is always whole."""
    dates = pd.to_datetime(dates).dt.normalize()
    if frequency(freq).days == 1:
        return dates
    days_before_last = (last.normalize() - dates).dt.days
    return last.normalize() - pd.to_timedelta((days_before_last // 7) * 7, unit="D")


#: The columns of the events that their sales are summed from.
SOLD = ["event_time", "event_type", "store_id", "item_id", "quantity", "unit_price"]


def stock_moves(events: pd.DataFrame) -> pd.DataFrame:
    """The purchase and return events with a fulfilling store, the columns of :data:`SOLD`:
    all that :func:`sales_from_events` reads."""
    moves = events["event_type"].isin(["purchase", "return"]) & events["store_id"].notna()
    return events.loc[moves, SOLD]


def sales_from_events(events: pd.DataFrame) -> pd.DataFrame:
    """Daily units per fulfilling store x item from purchase and return events (returns netted)."""
    moves = stock_moves(events)
    sign = np.where(moves["event_type"] == "return", -1.0, 1.0)
    daily = moves.assign(
        date=moves["event_time"].dt.normalize(),
        units=sign * moves["quantity"].to_numpy(),
        price_paid=moves["unit_price"],
    )
    return (
        daily.groupby(["date", "store_id", "item_id"], observed=True)
        .agg(units=("units", "sum"), unit_price=("price_paid", "mean"))
        .reset_index()
    )


def build_panel(
    sales: pd.DataFrame,
    *,
    freq: str = "D",
    inventory: pd.DataFrame | None = None,
    last: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """A regular panel per (store, item) from its first sale to ``last`` (default: last sale).

    Missing periods are zero sales, except periods in which the store's stock of the item was
    zero at some day's end (inventory forward-filled from its snapshots): those are ``censored``.
    Net negative units (more returns than sales) count as zero demand. Prices are the mean price
    paid, carried forward over periods without sales; ``on_promo`` and ``x_*`` are the period's
    maximum (missing = 0).
    """
    if sales.empty:
        raise ValueError("There are no sales to build a demand panel from.")
    last = pd.Timestamp(last) if last is not None else sales["date"].max()
    covariates = sorted(c for c in sales.columns if c.startswith(COVARIATE_PREFIX))
    frame = sales.assign(ds=period_end(sales["date"], freq, last))
    frame = frame[frame["ds"] <= last]
    aggregations = {"y": ("units", "sum")}
    if "unit_price" in frame:
        aggregations["unit_price"] = ("unit_price", "mean")
    if "on_promo" in frame:
        frame = frame.assign(on_promo=frame["on_promo"].astype("float64"))
        aggregations["on_promo"] = ("on_promo", "max")
    for column in covariates:
        aggregations[column] = (column, "max")
    grouped = (
        frame.groupby(["store_id", "item_id", "ds"], observed=True)
        .agg(**aggregations)
        .reset_index()
    )
    del frame

    keys = grouped.groupby(["store_id", "item_id"], observed=True)
    first = keys["ds"].min()  # one row per series, in the order of their keys
    stores, items = first.index.get_level_values(0), first.index.get_level_values(1)
    ids = (stores.astype("str") + SEP + items.astype("str")).to_numpy(dtype=object)
    order = np.argsort(ids, kind="stable")  # the panel's series order: by their ids
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    start = first.to_numpy()[order]
    step = frequency(freq).step
    n_periods = np.subtract(np.datetime64(last), start) // step + 1
    # Each series' periods from its first to ``last``: its start plus 0, 1, ... steps — as
    # integers, in place: the panel may have hundreds of millions of rows.
    offsets = np.cumsum(n_periods) - n_periods
    series = np.repeat(np.arange(len(order), dtype=np.int32), n_periods)
    unit = np.datetime_data(start.dtype)[0]
    ds = np.arange(len(series), dtype=np.int64)
    ds -= offsets[series]
    ds *= step.astype(f"m8[{unit}]").astype(np.int64)
    ds += start.astype(np.int64)[series]

    panel = pd.DataFrame(
        {
            SERIES: _key(ids, order, series),
            "store_id": _key(stores.to_numpy(), order, series),
            "item_id": _key(items.to_numpy(), order, series),
            PERIOD: ds.view(start.dtype),
        }
    )
    del ds, series
    # Each aggregated period's row: its series' first row plus the steps since its first period.
    at = rank[keys.ngroup().to_numpy()]
    at = offsets[at] + (grouped[PERIOD].to_numpy() - start[at]) // step
    for column in aggregations:
        values = np.full(len(panel), np.nan)
        values[at] = grouped[column].to_numpy(dtype=np.float64)
        if column == "unit_price":  # carried forward within each series (its rows are contiguous)
            values = _carried_forward(values, offsets)
        else:  # a period without sales: no demand, no promotion; net returns: no demand
            values[np.isnan(values)] = 0.0
            if column == TARGET:
                np.maximum(values, 0.0, out=values)
        panel[column] = values
    panel["censored"] = _censored(panel, inventory, freq, last)
    ordered = [SERIES, "store_id", "item_id", PERIOD, TARGET, "censored"]
    rest = [c for c in ("unit_price", "on_promo", *covariates) if c in panel]
    return panel[ordered + rest]


def _key(values: np.ndarray, order: np.ndarray, series: np.ndarray) -> pd.Categorical:
    """A key column of the panel from each series' key (``values``, in the series' ``order``):
    every row a code into the sorted distinct keys. As strings, the keys would be most of the
    panel's memory."""
    codes, uniques = pd.factorize(values[order], sort=True)
    categories: pd.Index = pd.Index(uniques)
    return pd.Categorical.from_codes(codes.astype(np.int32)[series], categories=categories)


def _carried_forward(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each missing value replaced by the last known one of its series (missing if none): the
    series are contiguous runs of rows starting at ``starts``."""
    index = np.int32 if len(values) < np.iinfo(np.int32).max else np.int64
    latest = np.where(np.isnan(values), -1, np.arange(len(values), dtype=index))
    # A series' first row is its own latest, missing or not: nothing is carried across series.
    latest[starts] = starts
    np.maximum.accumulate(latest, out=latest)
    return values[latest]


def _censored(
    panel: pd.DataFrame, inventory: pd.DataFrame | None, freq: str, last: pd.Timestamp
) -> np.ndarray:
    """Whether each panel row's period had a day ending with zero stock."""
    if inventory is None or inventory.empty:
        return np.zeros(len(panel), dtype=bool)
    snapshots = inventory[["date", "store_id", "item_id", "on_hand"]].sort_values("date")
    snapshots = snapshots[snapshots["date"] <= last]
    # Days out of stock: from a zero snapshot until the next snapshot of that store and item.
    snapshots = snapshots.assign(
        next_date=snapshots.groupby(["store_id", "item_id"], observed=True)["date"].shift(-1)
    )
    zero = snapshots[snapshots["on_hand"] <= 0]
    if zero.empty:
        return np.zeros(len(panel), dtype=bool)
    end = zero["next_date"].fillna(last + pd.Timedelta(days=1)) - pd.Timedelta(days=1)
    lengths = ((end - zero["date"]).dt.days + 1).clip(lower=1).to_numpy()
    days = zero["date"].to_numpy().repeat(lengths) + np.concatenate(
        [np.arange(n) for n in lengths]
    ).astype("timedelta64[D]")
    out_of_stock = pd.DataFrame(
        {
            "store_id": zero["store_id"].to_numpy().repeat(lengths),
            "item_id": zero["item_id"].to_numpy().repeat(lengths),
            PERIOD: period_end(pd.Series(days), freq, last).to_numpy(),
        }
    ).drop_duplicates()
    flagged = panel[["store_id", "item_id", PERIOD]].merge(
        out_of_stock.assign(_flag=True), on=["store_id", "item_id", PERIOD], how="left"
    )
    return flagged["_flag"].notna().to_numpy()


def extend_with_future(
    panel: pd.DataFrame, horizon: int, freq: str, plan: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Append ``horizon`` future periods to every series (``y`` missing), with covariates from
    ``plan`` where it has a row. Where it has none — the documented fallback — the price is the
    series' last price, no promotion, every ``x_*`` 0."""
    step = pd.Timedelta(frequency(freq).step)
    last = panel[PERIOD].max()
    series = panel.drop_duplicates(SERIES, keep="last")[
        [SERIES, "store_id", "item_id"] + (["unit_price"] if "unit_price" in panel else [])
    ]
    future = series.loc[series.index.repeat(horizon)].reset_index(drop=True)
    future[PERIOD] = np.tile([last + step * (h + 1) for h in range(horizon)], len(series))
    future[TARGET] = np.nan
    future["censored"] = False
    covariates = [c for c in panel.columns if c.startswith(COVARIATE_PREFIX) or c == "on_promo"]
    for column in covariates:
        future[column] = 0.0
    if plan is not None and not plan.empty:
        planned = plan.assign(ds=period_end(plan["date"], freq, last + step * horizon))
        planned = planned[(planned[PERIOD] > last) & (planned[PERIOD] <= last + step * horizon)]
        values = {c: "max" for c in covariates if c in planned}
        if "unit_price" in planned:
            values["unit_price"] = "mean"
        if values:
            if "on_promo" in planned:
                planned = planned.assign(on_promo=planned["on_promo"].astype("float64"))
            agg = (
                planned.groupby(["store_id", "item_id", PERIOD], observed=True)
                .agg(values)
                .reset_index()
            )
            future = future.merge(
                agg, on=["store_id", "item_id", PERIOD], how="left", suffixes=("", "_plan")
            ).astype({key: panel[key].dtype for key in ("store_id", "item_id")})  # the panel's keys
            for column in values:
                future[column] = (
                    future[f"{column}_plan"].fillna(future[column])
                    if column in future
                    else future[f"{column}_plan"]
                )
                future = future.drop(columns=f"{column}_plan")
    return pd.concat([panel, future[panel.columns]], ignore_index=True).sort_values(
        [SERIES, PERIOD], ignore_index=True
    )


@dataclass(frozen=True)
class Codes:
    """The integer codes of stores, items and categories, learned once (when a model is fitted)
    so that every later call codes a series as training did, whatever the panel holds; a value
    not seen then has no code (NaN)."""

    stores: tuple[str, ...]
    items: tuple[str, ...]
    categories: tuple[str, ...]

    @classmethod
    def learn(cls, panel: pd.DataFrame, items: pd.DataFrame | None = None) -> Codes:
        categories = _categories(items) if items is not None else pd.Series(dtype="str")
        return cls(
            stores=tuple(sorted(panel["store_id"].unique().astype(str))),
            items=tuple(sorted(panel["item_id"].unique().astype(str))),
            categories=tuple(sorted(categories.dropna().astype(str).unique())),
        )

    @cached_property
    def _indexes(self) -> dict[str, pd.Index]:
        names = ("stores", "items", "categories")
        return {name: pd.Index(getattr(self, name), dtype="str") for name in names}

    def code(self, values: pd.Series, vocabulary: str) -> np.ndarray:
        """The codes of ``values`` in one vocabulary (``stores``, ``items`` or ``categories``)."""
        # Look up each distinct value once (a panel repeats its few ids over millions of rows).
        rows, distinct = pd.factorize(values, use_na_sentinel=False)
        found = self._indexes[vocabulary].get_indexer(pd.Index(distinct.astype(str)))
        return np.where(found < 0, np.nan, found)[rows]


def build_features(
    panel: pd.DataFrame,
    spec: FeatureSpec,
    *,
    freq: str,
    items: pd.DataFrame | None = None,
    codes: Codes | None = None,
) -> pd.DataFrame:
    """The model matrix for every panel row (history and future alike), deterministic names.

    ``store_code``, ``item_code`` and ``category_code`` come from ``codes`` (a fitted model's;
    by default learned from this panel), so that they mean the same in training and forecasting.

    Features: ``lag{k}``; ``rolling_mean_lag{k}_window{w}``; calendar (``week_of_year`` and
    ``month`` when ``spec.calendar``, ``day_of_week`` for daily data); ``unit_price``,
    ``price_ratio`` (to the series' median price), ``on_promo``, ``x_*``; ``store_code``,
    ``item_code``, ``category_code``; and
    aggregates lagged like the target: ``category_store_rolling_mean_lag{h}_window{w}`` (the
    item's category at its store, per item) and ``item_stores_rolling_mean_lag{h}_window{w}``
    (the item across stores, per store).

    Lags are by period, not by row, so a gap in a series is read as unknown, never misaligned.
    Rows come back in the panel's own order, with its index.
    """
    step = frequency(freq).step
    first = panel[PERIOD].min()
    period = ((panel[PERIOD] - first) // step).to_numpy(dtype=np.int64)
    n_periods = int(period.max()) + 1 if len(period) else 0
    series = pd.factorize(panel[SERIES])[0]
    # A censored period's sales understate its demand: lags and means read it as unknown.
    demand = panel[TARGET].where(~panel["censored"].astype(bool)).to_numpy(dtype=np.float64)
    grid = _to_grid(series, period, demand, series.max() + 1 if len(series) else 0, n_periods)

    store = pd.factorize(panel["store_id"], sort=True)[0]
    item = pd.factorize(panel["item_id"], sort=True)[0]
    item_category = _item_categories(panel, items)
    category = pd.factorize(item_category, sort=True)[0] if item_category is not None else item
    lag = spec.horizon
    short = min(min(spec.rolling.get(lag, (4,))), frequency(freq).short)
    groups = {
        # Compact codes: the grids below are groups x periods.
        "category_store": pd.factorize(store * (category.max() + 2) + (category + 1))[0],
        "item_stores": item,
    }
    covariates = sorted(
        c for c in panel.columns if c == "on_promo" or c.startswith(COVARIATE_PREFIX)
    )
    names = [
        *(f"lag{k}" for k in spec.lags),
        *(f"rolling_mean_lag{k}_window{w}" for k, ws in sorted(spec.rolling.items()) for w in ws),
        *(["week_of_year", "month"] if spec.calendar else []),
        *(["day_of_week"] if freq == "D" else []),
        *(["unit_price", "price_ratio"] if "unit_price" in panel else []),
        *covariates, "store_code", "item_code", "category_code",
        *(f"{name}_rolling_mean_lag{lag}_window{short}" for name in groups),
    ]  # fmt: skip
    # One float32 block, column-major and filled in place: no consolidation copy.
    matrix = np.empty((len(panel), len(names)), dtype=np.float32, order="F")
    column = iter(range(len(names)))

    def put(values: np.ndarray) -> None:
        matrix[:, next(column)] = values

    cell = series * n_periods + period
    for k in spec.lags:
        put(_lagged(grid.ravel(), cell, period, k))
    for k, windows in sorted(spec.rolling.items()):
        for w in windows:
            put(_lagged(_rolling_mean(grid, w).ravel(), cell, period, k))
    calendar = pd.DatetimeIndex(first + step * np.arange(n_periods))
    if spec.calendar:
        put(calendar.isocalendar().week.to_numpy(dtype=np.float64)[period])
        put(calendar.month.to_numpy(dtype=np.float64)[period])
    if freq == "D":
        put(calendar.day_of_week.to_numpy(dtype=np.float64)[period])
    if "unit_price" in panel:
        price = panel["unit_price"].to_numpy(dtype=np.float64)
        regular = (
            panel.groupby(SERIES, sort=False, observed=True)["unit_price"]
            .transform("median")
            .to_numpy(dtype=np.float64)
        )
        put(price)
        # Against the regular price; unknown (missing) where that is 0 (a free item), not 0/0.
        put(np.divide(price, regular, out=np.full_like(price, np.nan), where=regular > 0))
    for name in covariates:
        put(panel[name].to_numpy(dtype=np.float64))
    codes = codes or Codes.learn(panel, items)
    item_code = codes.code(panel["item_id"], "items")
    put(codes.code(panel["store_id"], "stores"))
    put(item_code)
    put(codes.code(item_category, "categories") if item_category is not None else item_code)
    for group in groups.values():
        n_groups = group.max() + 1 if len(group) else 0
        means = _rolling_mean(_group_mean(group, period, demand, n_groups, n_periods), short)
        put(_lagged(means.ravel(), group * n_periods + period, period, lag))
    features = pd.DataFrame(matrix, columns=names, index=panel.index, copy=False)
    return pd.concat([panel[[SERIES, PERIOD]], features], axis=1)


def category_blocks(
    panel: pd.DataFrame, items: pd.DataFrame | None, max_rows: int
) -> list[np.ndarray]:
    """The panel's row positions (each block in the panel's order) in blocks of whole
    categories — the ``items`` table's category of each item (the items it does not categorise
    together), or each item its own without a table — taken in a fixed pseudo-random order of
    the categories (a hash of their names), each block at most ``max_rows`` rows unless one
    category alone has more; one block when the whole panel fits.

    Every aggregate of :func:`build_features` reads within one category (its items at a store,
    an item over its stores), so on a block of whole categories it gives exactly the features
    those rows have in the whole panel: the forecaster builds its features block by block.
    """
    if len(panel) <= max_rows:
        return [np.arange(len(panel))]
    category = _item_categories(panel, items)
    codes, names = pd.factorize(
        panel["item_id"] if category is None else category, use_na_sentinel=False
    )
    rank = np.empty(len(names), dtype=np.int32)
    rank[_hash_order(names)] = np.arange(len(names))
    key = rank[codes]
    del codes
    order = np.argsort(key, kind="stable")
    # Positions of 32 bits where they fit: a panel at scale has 10^8 rows.
    index = np.int32 if len(panel) < np.iinfo(np.int32).max else np.int64
    blocks, start, taken = [], 0, 0
    for size in np.bincount(key, minlength=len(names)):
        if taken and taken + size > max_rows:
            blocks.append(np.sort(order[start : start + taken]).astype(index))
            start, taken = start + taken, 0
        taken += size
    if taken:
        blocks.append(np.sort(order[start : start + taken]).astype(index))
    return blocks


def series_sample(panel: pd.DataFrame, max_rows: int) -> np.ndarray | None:
    """Which rows belong to whole series taken in a fixed pseudo-random order (a hash of their
    ids) up to ``max_rows`` rows (at least one series); None when the whole panel fits."""
    if len(panel) <= max_rows:
        return None
    codes, ids = pd.factorize(panel[SERIES])
    order = _hash_order(ids)
    fits = np.cumsum(np.bincount(codes, minlength=len(ids))[order]) <= max_rows
    fits[0] = True
    taken = np.zeros(len(ids), dtype=bool)
    taken[order[fits]] = True
    return taken[codes]


def _hash_order(names: pd.Index | np.ndarray) -> np.ndarray:
    """The positions of ``names`` in a fixed pseudo-random order: by a hash of each name."""
    return np.argsort(pd.util.hash_array(np.asarray(names, dtype=object)), kind="stable")


def _item_categories(panel: pd.DataFrame, items: pd.DataFrame | None) -> pd.Series | None:
    """Each row's item category from the ``items`` table (NaN where it has none); None without
    a table."""
    return panel["item_id"].map(_categories(items)) if items is not None else None


def _to_grid(
    rows: np.ndarray, columns: np.ndarray, values: np.ndarray, n_rows: int, n_columns: int
) -> np.ndarray:
    grid = np.full((n_rows, n_columns), np.nan)
    grid[rows, columns] = values
    return grid


def _lagged(flat: np.ndarray, cell: np.ndarray, period: np.ndarray, lag: int) -> np.ndarray:
    """The value ``lag`` periods before each row's cell of a row-major grid (NaN before start)."""
    values = flat.take(np.maximum(cell - lag, 0))
    values[period < lag] = np.nan
    return values


def _rolling_mean(grid: np.ndarray, window: int) -> np.ndarray:
    """Mean of the known values among the last ``window`` cells of each row, this one included
    (NaN if none)."""
    known = ~np.isnan(grid)
    sums = np.zeros((grid.shape[0], grid.shape[1] + 1))
    np.cumsum(np.where(known, grid, 0.0), axis=1, out=sums[:, 1:])
    counts = np.zeros((grid.shape[0], grid.shape[1] + 1), dtype=np.int32)
    np.cumsum(known, axis=1, out=counts[:, 1:])
    total = sums[:, 1:].copy()
    count = counts[:, 1:].copy()
    if window < grid.shape[1]:
        total[:, window:] -= sums[:, 1 : grid.shape[1] + 1 - window]
        count[:, window:] -= counts[:, 1 : grid.shape[1] + 1 - window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _group_mean(
    group: np.ndarray, period: np.ndarray, values: np.ndarray, n_groups: int, n_periods: int
) -> np.ndarray:
    """Mean of the known values per (group, period), as a groups x periods grid."""
    known = ~np.isnan(values)
    cell = group[known] * n_periods + period[known]
    size = n_groups * n_periods
    total = np.bincount(cell, weights=values[known], minlength=size)
    count = np.bincount(cell, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean.reshape(n_groups, n_periods)


def _categories(items: pd.DataFrame) -> pd.Series:
    if "category" not in items:
        return pd.Series(dtype="str")
    return items.drop_duplicates("item_id").set_index("item_id")["category"]
