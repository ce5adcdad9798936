"""Identity resolution: chains, anonymous rows, over-shared links, the size cap, pseudonyms, and
pairwise precision/recall against the generator's truth."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.identity import (
    DEMO_SALT,
    DemoSaltWarning,
    IdentityConfig,
    WeakSaltWarning,
    build_customers,
    key_pseudonyms,
    resolve_identities,
    unify_events,
)
from features.ingest import load_dataset

CONFIG = IdentityConfig(salt="test-salt", max_keys_per_link=4, max_keys_per_customer=6)


def links(*rows: tuple[str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["channel", "customer_key", "link_type", "link_value"])


def keys(*rows: tuple[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["channel", "customer_key"])


def customer(resolution, channel: str, key: str | None) -> str:
    return resolution.customer_of(pd.Series([channel]), pd.Series([key], dtype="str")).iloc[0]


def test_chain_merges_across_channels_and_link_types() -> None:
    ids = links(
        ("store", "L1", "email", "e1"),
        ("web", "W1", "email", "e1"),
        ("web", "W1", "phone", "p1"),
        ("app", "A1", "phone", "p1"),
    )
    r = resolve_identities(keys(("app", "A1"), ("store", "L9")), ids, CONFIG)
    assert customer(r, "store", "L1") == customer(r, "web", "W1") == customer(r, "app", "A1")
    assert customer(r, "store", "L9") != customer(r, "store", "L1")  # unlinked key: own customer


def test_same_value_under_different_link_types_does_not_merge() -> None:
    ids = links(("web", "W1", "email", "123"), ("store", "L1", "phone", "123"))
    r = resolve_identities(keys(), ids, CONFIG)
    assert customer(r, "web", "W1") != customer(r, "store", "L1")


def test_same_key_in_two_channels_is_two_nodes() -> None:
    r = resolve_identities(keys(("web", "K1"), ("app", "K1")), None, CONFIG)
    assert customer(r, "web", "K1") != customer(r, "app", "K1")


def test_anonymous_rows_stay_anonymous() -> None:
    events = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2024-01-01", "2024-01-02"]),
            "channel": ["store", "store"],
            "event_type": ["purchase", "purchase"],
            "item_id": ["I1", "I2"],
            "customer_key": pd.Series(["L1", None], dtype="str"),
            "quantity": [1.0, 1.0],
            "unit_price": [1.0, 1.0],
            "store_id": ["S1", "S1"],
            "event_id": ["e1", "e2"],
        }
    )
    r = resolve_identities(events, None, CONFIG)
    unified = unify_events(events, r)
    assert unified["customer_id"].notna().tolist() == [True, False]
    assert "customer_key" not in unified.columns
    # Regression: with no key at all (an all-anonymous export) this was an IndexError.
    nobody = events.assign(customer_key=pd.Series([None, None], dtype="str"))
    alone = unify_events(nobody, resolve_identities(nobody, None, CONFIG))
    assert alone["customer_id"].isna().all()


def test_over_shared_link_is_ignored_and_reported() -> None:
    shop = [("store", f"L{i}", "email", "shop@example") for i in range(5)]  # 5 > cap of 4
    ids = links(*shop, ("store", "L0", "phone", "p0"), ("web", "W0", "phone", "p0"))
    r = resolve_identities(keys(), ids, CONFIG)
    assert len({customer(r, "store", f"L{i}") for i in range(5)}) == 5
    assert customer(r, "store", "L0") == customer(r, "web", "W0")  # genuine link still followed
    report = r.ignored_links
    assert report["rule"].tolist() == ["over-shared link"] and report["n_keys"].tolist() == [5]
    assert "shop@example" not in report.to_string()  # the raw link value never leaves


def test_component_cap_splits_a_chain_of_small_links() -> None:
    # Ten keys in one chain, each link shared by two or three keys (under the per-link cap).
    chain = []
    for i in range(9):
        chain += [("web", f"W{i}", "device", f"d{i}"), ("web", f"W{i + 1}", "device", f"d{i}")]
    chain += [("web", "W5", "device", "d3")]  # d3 now joins three keys: the most shared
    r = resolve_identities(keys(), links(*chain), CONFIG)
    sizes = r.nodes.groupby("customer_id").size()
    assert sizes.max() <= CONFIG.max_keys_per_customer
    assert r.split_components == 1 and "component size cap" in set(r.ignored_links["rule"])
    assert customer(r, "web", "W0") == customer(r, "web", "W1")  # small neighbourhoods survive


def test_resolution_is_deterministic_and_independent_of_row_order() -> None:
    ids = links(
        ("store", "L1", "email", "e1"), ("web", "W1", "email", "e1"), ("app", "A1", "phone", "p")
    )
    first = resolve_identities(keys(("app", "A1")), ids, CONFIG).nodes
    second = resolve_identities(keys(("app", "A1")), ids.iloc[::-1], CONFIG).nodes
    pd.testing.assert_frame_equal(first, second)


def test_pseudonyms_depend_on_the_salt() -> None:
    k = keys(("web", "W1"))
    a = resolve_identities(k, None, CONFIG).nodes["customer_id"].iloc[0]
    b = resolve_identities(k, None, IdentityConfig(salt="other")).nodes["customer_id"].iloc[0]
    assert a != b and "W1" not in a
    assert (
        key_pseudonyms("test-salt", pd.Series(["web"]), pd.Series(["W1"]))[0]
        == (resolve_identities(k, None, CONFIG).nodes["key_id"].iloc[0])
    )


def test_demo_salt_warns_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_SALT", raising=False)
    with pytest.warns(DemoSaltWarning, match="DEMO salt"):
        config = IdentityConfig.from_env()
    assert config.salt == DEMO_SALT
    monkeypatch.setenv("OMNI_SALT", "s3cret")  # a guessable one: said, not refused
    with pytest.warns(WeakSaltWarning, match="OMNI_SALT has 6 characters"):
        assert IdentityConfig.from_env().salt == "s3cret"
    monkeypatch.setenv("OMNI_SALT", "k" * 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert IdentityConfig.from_env().salt == "k" * 32


def test_customers_table_has_home_store_and_no_raw_keys() -> None:
    events = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "channel": ["store", "store", "web"],
            "event_type": ["purchase", "purchase", "view"],
            "item_id": ["I1", "I2", "I3"],
            "customer_key": ["L1", "L1", "W1"],
            "quantity": [1.0, 1.0, 1.0],
            "unit_price": [1.0, 1.0, 1.0],
            "store_id": ["S2", "S2", None],
            "event_id": ["e1", "e2", "e3"],
        }
    )
    ids = links(("store", "L1", "email", "x"), ("web", "W1", "email", "x"))
    r = resolve_identities(events, ids, CONFIG)
    customers = build_customers(unify_events(events, r), r)
    row = customers.iloc[0]
    assert len(customers) == 1 and row["n_keys"] == 2 and row["channels"] == "store|web"
    assert row["n_events"] == 3 and row["n_purchases"] == 2 and row["home_store"] == "S2"
    assert not customers.astype(str).isin(["L1", "W1", "x"]).any().any()


def _pairs(sizes: pd.Series) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


def test_pairwise_precision_and_recall_against_generator_truth(small_dataset: Path) -> None:
    """Targets: precision >= 0.99 of merged pairs; recall >= 0.95 of observable pairs.

    Observable: two keys of one true customer joined by a chain of *genuine* link values (held
    by one true customer only); the shop's generic e-mail is not evidence of anything.
    """
    tables = load_dataset(small_dataset, ("events", "identities"))
    truth = pd.read_csv(small_dataset / "_truth" / "keys.csv", dtype=str)
    ids = tables["identities"].accepted
    r = resolve_identities(tables["events"].accepted, ids, IdentityConfig(salt="t"))
    truth["predicted"] = r.customer_of(truth["channel"], truth["customer_key"]).to_numpy()

    owner = ids.merge(truth, on=["channel", "customer_key"])
    genuine = owner.groupby(["link_type", "link_value"])["true_customer"].transform("nunique") == 1
    observable = resolve_identities(
        truth, owner[genuine][["channel", "customer_key", "link_type", "link_value"]],
        IdentityConfig(salt="t", max_keys_per_link=10**6, max_keys_per_customer=10**6),
    )  # fmt: skip
    truth["observable"] = observable.customer_of(truth["channel"], truth["customer_key"]).to_numpy()

    merged = _pairs(truth.groupby("predicted").size())
    correct = _pairs(truth.groupby(["predicted", "true_customer"]).size())
    reachable = _pairs(truth.groupby(["observable", "true_customer"]).size())
    found = _pairs(truth.groupby(["observable", "true_customer", "predicted"]).size())
    assert merged > 100 and reachable > 100  # the data set has something to find
    assert correct / merged >= 0.99
    assert found / reachable >= 0.95
    # Not every true pair is observable: the generator links a realistic fraction only.
    assert reachable < _pairs(truth.groupby("true_customer").size())
    assert np.isfinite(correct / merged)


def test_generator_truth_is_not_in_the_data_directory_tables(small_dataset: Path) -> None:
    assert not any(p.stem.startswith("keys") for p in small_dataset.glob("*.*"))
    assert os.path.isdir(small_dataset / "_truth")
