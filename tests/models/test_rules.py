"""Business rules: hand cases, and a property check on the sample data that no list breaks one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.interactions import Interactions
from models.recommenders import EASERecommender, PopularityRecommender
from models.rules import BusinessRules, recommend_with_rules

ITEMS = pd.DataFrame(
    {
        "item_id": ["milk", "bread", "tv", "radio", "phone"],
        "category": ["food", "food", "electronics", "electronics", "electronics"],
        "repurchasable": [True, True, False, False, False],
    }
)
INVENTORY = pd.DataFrame(
    {
        "date": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-01", "2024-01-01"]),
        "store_id": ["S1", "S1", "S1", "S2"],
        "item_id": ["tv", "tv", "radio", "radio"],
        "on_hand": [3.0, 0.0, 0.0, 5.0],
    }
)
PURCHASES = pd.DataFrame({"customer_id": ["c1", "c1"], "item_id": ["milk", "tv"]})


def model() -> PopularityRecommender:
    ids = pd.Index(ITEMS["item_id"])
    # Everyone bought everything once; popularity order is the column order (ties: lower id).
    matrix = sp.csr_matrix(np.array([[5, 4, 3, 2, 1], [5, 4, 3, 2, 1]], dtype=np.float32))
    return PopularityRecommender().fit(Interactions(matrix, pd.Index(["u1", "u2"]), ids))


def rules(**kwargs) -> BusinessRules:
    return BusinessRules.from_tables(pd.Index(ITEMS["item_id"]), purchases=PURCHASES, **kwargs)


def test_bought_items_come_back_only_when_repurchasable() -> None:
    recs = recommend_with_rules(model(), rules(items=ITEMS), ["c1"], n=5)
    assert "milk" in set(recs["item_id"]) and "tv" not in set(recs["item_id"])


def test_an_item_a_customer_bought_in_two_baskets_comes_back_for_them() -> None:
    """Their own evidence wins over the catalogue's flag, for them alone: from the purchases
    table (``baskets``) or from purchases posted later, a basket apart (30 minutes)."""
    bought = pd.DataFrame(
        {"customer_id": ["c1", "c1", "c2"], "item_id": ["milk", "tv", "tv"], "baskets": [1, 2, 1]}
    )
    r = BusinessRules.from_tables(pd.Index(ITEMS["item_id"]), purchases=bought, items=ITEMS)
    offered = recommend_with_rules(model(), r, ["c1", "c2"], n=5).groupby("customer_id")["item_id"]
    assert "tv" in set(offered.get_group("c1")) and "tv" not in set(offered.get_group("c2"))

    def offered_to_c2() -> set[str]:
        return set(recommend_with_rules(model(), r, ["c2"], n=5)["item_id"])

    at = pd.Timestamp("2024-03-20 18:00")
    r.add_purchases(["c2"], pd.Series(["radio"]), pd.Series([at]))
    r.add_purchases(["c2"], pd.Series(["radio"]), pd.Series([at + pd.Timedelta(minutes=10)]))
    assert "radio" not in offered_to_c2()  # the same basket
    r.add_purchases(["c2"], pd.Series(["radio"]), pd.Series([at + pd.Timedelta(hours=2)]))
    assert "radio" in offered_to_c2()  # a second basket
    posted = pd.Series([at, at + pd.Timedelta(hours=2)])  # two baskets in one posted batch
    r.add_purchases(["c2", "c2"], pd.Series(["phone", "phone"]), posted)
    assert {"radio", "phone"} <= offered_to_c2() and "tv" not in offered_to_c2()


def test_a_rebought_item_just_bought_moves_down_like_a_repurchasable_one() -> None:
    """A tv bought in two baskets, the last a day ago, with a usual interval of 8 days: moved
    down at once, back in its place once the interval has passed. One batch that adds a known
    item and a new one merges both."""
    items = ITEMS.assign(repurchase_days=[np.nan, np.nan, 8.0, np.nan, np.nan])
    at = pd.Timestamp("2024-03-20 18:00")
    bought = pd.DataFrame({"customer_id": ["c1"], "item_id": ["tv"], "baskets": [2], "time": [at]})
    r = BusinessRules.from_tables(
        pd.Index(ITEMS["item_id"]), purchases=bought, items=items, timing=1.0
    )

    def ranks(now: pd.Timestamp) -> dict[str, int]:
        listed = recommend_with_rules(model(), r, ["c1"], n=5, now=now)
        return dict(zip(listed["item_id"], listed["rank"], strict=True))

    assert ranks(at + pd.Timedelta(days=1))["tv"] > ranks(at + pd.Timedelta(days=9))["tv"] == 3
    later = at + pd.Timedelta(days=2)
    r.add_purchases(["c1", "c1"], pd.Series(["tv", "radio"]), pd.Series([later, later]))
    columns = r.item_ids[r.bought_by["c1"]]
    assert dict(zip(columns, r.bought_again["c1"], strict=True)) == {"tv": True, "radio": False}
    last = dict(zip(columns, r.bought_at["c1"], strict=True))
    assert last["tv"] == last["radio"]  # the tv's last purchase is the new one


def test_new_only_leaves_out_every_item_bought_repurchasable_or_not() -> None:
    recs = recommend_with_rules(model(), rules(items=ITEMS), ["c1"], n=5, new_only=True)
    assert set(recs["item_id"]) == {"bread", "radio", "phone"}  # c1 bought milk and tv


def test_unknown_repurchasability_means_not_offered_again() -> None:
    recs = recommend_with_rules(model(), rules(), ["c1"], n=5)
    assert not {"milk", "tv"} & set(recs["item_id"])


def test_store_uses_its_latest_stock_and_online_any_node() -> None:
    r = rules(items=ITEMS, inventory=INVENTORY)
    at_s1 = set(
        recommend_with_rules(model(), r, ["c2"], n=5, channel="store", store_id="S1")["item_id"]
    )
    assert "tv" not in at_s1 and "radio" not in at_s1  # latest tv snapshot is 0; radio 0 at S1
    assert {"milk", "bread", "phone"} <= at_s1  # never reported at S1: no evidence, not filtered
    online = set(recommend_with_rules(model(), r, ["c2"], n=5, channel="app")["item_id"])
    assert online == {"radio"}  # only radio has stock anywhere (S2); the rest is unknown or 0
    unknown_store = set(
        recommend_with_rules(model(), r, ["c2"], n=5, channel="store", store_id="S9")["item_id"]
    )
    assert unknown_store == set(ITEMS["item_id"])


def test_no_inventory_means_no_availability_filter() -> None:
    recs = recommend_with_rules(model(), rules(items=ITEMS), ["c2"], n=5, channel="web")
    assert len(recs) == 5


def test_category_filters_and_cap() -> None:
    r = rules(items=ITEMS)
    only_food = recommend_with_rules(model(), r, ["c2"], n=5, include_categories=["food"])
    assert set(only_food["item_id"]) == {"milk", "bread"}
    no_food = recommend_with_rules(model(), r, ["c2"], n=5, exclude_categories=["food"])
    assert set(no_food["item_id"]) == {"tv", "radio", "phone"}
    capped = recommend_with_rules(model(), r, ["c2"], n=3, per_category=1)
    assert list(capped["item_id"]) == ["milk", "tv"] and list(capped["rank"]) == [1, 2]


@pytest.mark.parametrize("channel", ["store", "web"])
def test_no_recommendation_ever_breaks_a_rule_on_the_sample(channel: str) -> None:
    from features.identity import IdentityConfig, resolve_identities, unify_events
    from features.ingest import load_dataset
    from features.interactions import build_interactions
    from tests.conftest import SAMPLE

    tables = {k: t.accepted for k, t in load_dataset(SAMPLE).items()}
    resolution = resolve_identities(
        tables["events"], tables["identities"], IdentityConfig(salt="t")
    )
    events = unify_events(tables["events"], resolution)
    inter = build_interactions(events)
    fitted = EASERecommender(l2=50.0).fit(inter)
    purchases = events[events["event_type"] == "purchase"][["customer_id", "item_id"]].astype(str)
    r = BusinessRules.from_tables(
        fitted.item_ids_, purchases=purchases, items=tables["items"], inventory=tables["inventory"]
    )
    customers = list(inter.customer_ids[:300])
    recs = recommend_with_rules(
        fitted, r, customers, n=10, channel=channel, store_id="S001", per_category=3
    )
    assert len(recs) > 0.5 * 10 * len(customers)
    allowed = r.allowed(channel=channel, store_id="S001")
    columns = fitted.item_ids_.get_indexer(pd.Index(recs["item_id"]))
    assert allowed[columns].all()
    repurchasable = r.repurchasable[columns]
    bought = {(c, i) for c, i in purchases.itertuples(index=False)}
    pairs = list(zip(recs["customer_id"], recs["item_id"], strict=True))
    assert not any((p in bought) and not rep for p, rep in zip(pairs, repurchasable, strict=True))
    categories = (
        pd.Series(r.category[columns]).groupby(recs["customer_id"].to_numpy()).value_counts()
    )
    assert categories.max() <= 3


@pytest.mark.parametrize("name", ["ease", "als", "item_knn", "popularity"])
def test_the_one_customer_path_ranks_as_the_models_batch_path(name: str) -> None:
    """The service's per-request path gives the model's own batch ranking with the bought,
    not repurchasable items excluded, for every model family."""
    from models.recommenders import ALSRecommender, ItemKNNRecommender
    from models.rules import top_for_customer

    rng = np.random.default_rng(3)
    dense = (rng.random((60, 30)) < 0.2).astype(np.float32)
    items = pd.Index([f"i{j:02d}" for j in range(30)])
    customers = pd.Index([f"c{u:02d}" for u in range(60)])
    build = {
        "ease": lambda: EASERecommender(l2=5.0),
        "als": lambda: ALSRecommender(factors=4, iterations=5),
        "item_knn": lambda: ItemKNNRecommender(neighbours=10),
        "popularity": PopularityRecommender,
    }[name]
    fitted = build().fit(Interactions(sp.csr_matrix(dense), customers, items))
    purchases = pd.DataFrame({"customer_id": ["c00", "c01"], "item_id": ["i03", "i04"]})
    r = BusinessRules.from_tables(items, purchases=purchases)
    for customer in ["c00", "c01", "c07", "stranger"]:
        bought = r.bought_by.get(customer, np.zeros(0, dtype=np.int64))
        exclude = sp.csr_matrix((np.ones(len(bought), bool), ([0] * len(bought), bought)), (1, 30))
        batch = fitted.recommend([customer], n=7, exclude_seen=False, exclude=exclude)
        columns, scores, fallback = top_for_customer(fitted, r, customer, 7, channel="web")
        assert list(items[columns]) == list(batch["item_id"]), customer
        np.testing.assert_allclose(scores, batch["score"].to_numpy(), rtol=1e-5)
        assert fallback == bool(batch["fallback"].all())


def test_the_live_stock_picture_moves_what_may_be_offered_at_once() -> None:
    r = rules(inventory=INVENTORY.assign(on_hand=[3.0, 1.0, 0.0, 5.0]))
    tv = list(ITEMS["item_id"]).index("tv")
    assert r.allowed(channel="store", store_id="S1")[tv] and r.available_at([tv]) == [["S1"]]
    r.set_available(["S1"], ["tv"], [0.0])  # the last one sold or reserved
    assert not r.allowed(channel="store", store_id="S1")[tv] and r.available_at([tv]) == [[]]
    assert not r.allowed(channel="web")[tv]  # no node has one left
    assert r.available("tv").to_dict() == {"S1": 0.0}
    r.set_available(["S1", "S9"], ["tv", "tv"], [2.0, 1.0])  # a return; a node never seen
    assert r.allowed(channel="store", store_id="S1")[tv] and r.allowed(channel="web")[tv]
    assert r.available("tv").to_dict() == {"S1": 2.0, "S9": 1.0}
    assert r.available_at([tv]) == [["S1", "S9"]]
    r.set_available(["S1"], ["not-in-the-index"], [5.0])  # ignored
    assert r.available("tv").to_dict() == {"S1": 2.0, "S9": 1.0}
