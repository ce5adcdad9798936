"""The generator: deterministic for a seed, and the structure it promises is really in the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.synthetic import GeneratorConfig, generate
from features.ingest import load_dataset


def read(data: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(data / f"{table}.csv", dtype=str, keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def tables(small_dataset: Path) -> dict[str, pd.DataFrame]:
    return {name: t.accepted for name, t in load_dataset(small_dataset).items()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    config = GeneratorConfig(customers=120, items=40, stores=2, days=30, seed=3)
    generate(config, tmp_path / "a")
    generate(config, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) >= 10
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    other = GeneratorConfig(customers=120, items=40, stores=2, days=30, seed=4)
    generate(other, tmp_path / "c")
    assert (tmp_path / "a" / "events.csv").read_bytes() != (
        tmp_path / "c" / "events.csv"
    ).read_bytes()


def test_every_corrupted_row_is_quarantined_and_nothing_else(small_dataset: Path) -> None:
    corrupted = json.loads((small_dataset / "_truth" / "corrupted_rows.json").read_text())
    loaded = load_dataset(small_dataset)
    assert corrupted["events"] > 0
    for name, t in loaded.items():
        assert len(t.quarantined) == corrupted.get(name, 0), name


def test_parquet_output_is_typed_and_loads(tmp_path: Path) -> None:
    """Regression: a day without events (seed 4) gave text columns of no type, which the
    Parquet file, typed by the first day, refused."""
    config = GeneratorConfig(customers=100, items=30, stores=2, days=40, seed=4, format="parquet")
    generate(config, tmp_path)
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert pd.api.types.is_datetime64_any_dtype(events["event_time"])
    corrupted = json.loads((tmp_path / "_truth" / "corrupted_rows.json").read_text())
    loaded = load_dataset(tmp_path)
    assert len(loaded["events"].quarantined) == corrupted["events"]


def test_weekly_and_yearly_seasonality(small_dataset: Path) -> None:
    demand = read(small_dataset, "_truth/demand").astype({"demand": float})
    daily = demand.groupby("date")["demand"].sum()
    daily.index = pd.to_datetime(daily.index)
    by_weekday = daily.groupby(daily.index.day_of_week).mean()
    assert by_weekday[5] > 1.2 * by_weekday[1]  # Saturday busier than Tuesday
    # Trips peak in mid-December: January is busier than May.
    assert daily.iloc[:28].mean() > 1.1 * daily.iloc[-28:].mean()


def test_promotions_lift_sales(tables: dict[str, pd.DataFrame]) -> None:
    sales = tables["sales"].assign(week=lambda s: s["date"].dt.to_period("W"))
    weekly = sales.groupby(["item_id", "week"]).agg(
        units=("units", "sum"), promo=("on_promo", "max")
    )
    grid = pd.MultiIndex.from_product(weekly.index.levels, names=weekly.index.names)
    weekly = weekly.reindex(grid).fillna({"units": 0.0, "promo": False})
    per_item = weekly.groupby(["item_id", "promo"])["units"].mean().unstack()
    per_item = per_item.dropna()
    per_item = per_item[per_item[False] > 0]
    assert len(per_item) >= 10
    assert (per_item[True] / per_item[False]).median() > 1.3


def test_stock_outs_censor_sales(small_dataset: Path, tables: dict[str, pd.DataFrame]) -> None:
    demand = read(small_dataset, "_truth/demand").astype({"demand": float})
    inventory = tables["inventory"]
    assert (inventory["on_hand"] == 0).sum() > 10
    assert demand["demand"].sum() > tables["sales"]["units"].sum() * 1.01
    # And never more sold than demanded.
    assert demand["demand"].sum() >= tables["sales"]["units"].sum()


def test_views_precede_online_purchases_and_click_and_collect(
    tables: dict[str, pd.DataFrame],
) -> None:
    events = tables["events"]
    online = events[events["channel"].isin(["web", "app"]) & events["customer_key"].notna()]
    purchases = online[online["event_type"] == "purchase"]
    views = online[online["event_type"] == "view"]
    first_view = views.groupby(["customer_key", "item_id"])["event_time"].min()
    joined = purchases.join(first_view.rename("viewed"), on=["customer_key", "item_id"])
    assert (joined["viewed"] < joined["event_time"]).mean() > 0.95
    stores = tables["stores"]
    physical = set(stores.loc[stores["kind"] == "store", "store_id"])
    assert purchases["store_id"].isin(physical).mean() > 0.05  # click-and-collect
    assert (events["event_type"] == "return").sum() > 0
    assert events.loc[events["channel"] == "store", "customer_key"].isna().mean() > 0.1  # no card


def test_customers_appear_under_several_keys_and_channels(small_dataset: Path) -> None:
    truth = read(small_dataset, "_truth/keys")
    keys_per_customer = truth.groupby("true_customer")["channel"].nunique()
    assert (keys_per_customer >= 3).mean() > 0.1
    identities = read(small_dataset, "identities")
    linked = identities.merge(truth, on=["channel", "customer_key"])
    assert 0.3 < linked["customer_key"].nunique() / len(truth) < 0.95  # a realistic fraction


def test_catalogue_and_stores_shape(tables: dict[str, pd.DataFrame]) -> None:
    items, stores = tables["items"], tables["stores"]
    assert set(stores["kind"]) == {"store", "online", "dc"}
    assert items["repurchasable"].any() and not items["repurchasable"].all()
    assert items["promotable"].any() and not items["promotable"].all()
    counts = tables["events"]["item_id"].value_counts()
    top_decile = counts.iloc[: max(1, len(counts) // 10)].sum() / counts.sum()
    assert top_decile > 0.25  # long tail: the top 10% of items take a large share
    plan = tables["plan"]
    assert plan["date"].min() > tables["events"]["event_time"].max()
    assert plan["on_promo"].any()


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="customers must be at least 1"):
        GeneratorConfig(customers=0)
    with pytest.raises(ValueError, match="format must be one of"):
        GeneratorConfig(format="xlsx")


def test_tastes_make_purchases_predictable(tables: dict[str, pd.DataFrame]) -> None:
    """Customers concentrate on few categories: something real for a recommender to find."""
    events = tables["events"].merge(tables["items"][["item_id", "category"]], on="item_id")
    bought = events[(events["event_type"] == "purchase") & events["customer_key"].notna()]
    share = bought.groupby("customer_key")["category"].agg(
        lambda c: c.value_counts(normalize=True).iloc[0] if len(c) >= 5 else np.nan
    )
    n_categories = tables["items"]["category"].nunique()
    assert share.dropna().median() > 1 / n_categories + 0.2


def test_stores_that_vary_differ_in_size_assortment_and_taste(tmp_path: Path) -> None:
    base = dict(customers=3000, items=60, stores=6, days=60, seed=4, bad_fraction=0.0)
    generate(GeneratorConfig(**base), tmp_path / "alike")
    generate(GeneratorConfig(**base, store_variety=1.0), tmp_path / "vary")
    # Its own random numbers: the catalogue is drawn exactly as without variety.
    for name in ("items.csv", "stores.csv"):
        assert (tmp_path / "alike" / name).read_bytes() == (tmp_path / "vary" / name).read_bytes()

    def sales(kind: str) -> pd.DataFrame:
        frame = pd.read_csv(tmp_path / kind / "sales.csv")
        return frame[frame["store_id"] != "ONLINE"].pivot_table(
            index="store_id", columns="item_id", values="units", aggfunc="sum", fill_value=0
        )

    alike, vary = sales("alike"), sales("vary")
    size = vary.sum(axis=1)
    assert size.std() / size.mean() > 2 * (alike.sum(axis=1).std() / alike.sum(axis=1).mean())

    # Each store's mix of items: alike stores share one; stores that vary drift apart.
    def spread(table: pd.DataFrame) -> float:
        shares = table.div(table.sum(axis=1), axis=0)
        return float((shares - shares.mean()).abs().sum(axis=1).mean())

    assert spread(vary) > 1.5 * spread(alike)
    assert (vary == 0).sum().sum() > (alike == 0).sum().sum()  # local assortments


def test_a_partitioned_parquet_data_set_reads_as_its_single_files_do(tmp_path: Path) -> None:
    """Month by month in a hive layout (events/month=2024-01/part-0.parquet), or one file per
    table: the same rows accepted, the same quarantined, the same unified events."""
    from experiments.pipelines.data import unify
    from features.identity import IdentityConfig

    config = GeneratorConfig(customers=150, items=40, stores=2, days=70, seed=5, format="parquet")
    generate(config, tmp_path / "files")
    partitioned = GeneratorConfig(**{**config.__dict__, "format": "parquet-partitioned"})
    generate(partitioned, tmp_path / "parts")
    months = sorted(p.name for p in (tmp_path / "parts" / "events").iterdir())
    assert months == ["month=2024-01", "month=2024-02", "month=2024-03"]
    files, parts = load_dataset(tmp_path / "files"), load_dataset(tmp_path / "parts")
    assert set(files) == set(parts) == {
        "events", "sales", "inventory", "plan", "identities", "items", "stores"
    }  # fmt: skip
    for name in files:
        pd.testing.assert_frame_equal(parts[name].accepted, files[name].accepted, obj=name)
        assert len(parts[name].quarantined) == len(files[name].quarantined), name
    identity = IdentityConfig(salt="partitions")
    pd.testing.assert_frame_equal(
        unify(tmp_path / "parts", identity).unified, unify(tmp_path / "files", identity).unified
    )
