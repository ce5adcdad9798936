"""The two-stage recommender on baskets small enough to know the answer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import scipy.sparse as sp

from models.recommenders import RankedTIFURecommender, Recommender, TIFUKNNRecommender

# Pure frequency, own history only: TIFU-KNN ranks what a customer bought most, first.
PARAMS = {"alpha": 1.0, "group_size": 1, "within": 1.0, "across": 1.0, "neighbours": 5}


def hit_baskets(customers: int = 40) -> tuple[pd.DataFrame, pd.Index]:
    """Every customer bought their own item in baskets 1-3 and never again; their 4th (last)
    basket holds only "hit", which the first half of them had also bought all along."""
    rows = []
    for u in range(customers):
        for b in range(4):
            day = pd.Timestamp("2024-01-01") + pd.Timedelta(days=7 * b)
            if b < 3:
                rows.append((f"c{u:02d}", f"c{u:02d}-{b}", f"own{u:02d}", day))
            if b == 3 or u < customers // 2:
                rows.append((f"c{u:02d}", f"c{u:02d}-{b}", "hit", day))
    lines = pd.DataFrame(rows, columns=["customer_id", "basket_id", "item_id", "time"])
    return lines, pd.Index(sorted(lines["item_id"].unique()), dtype="str")


def test_the_ranker_learns_from_last_baskets_what_frequency_alone_misses(tmp_path: Path) -> None:
    lines, items = hit_baskets()
    late = "c39"  # bought "hit" once (last basket), its own item three times before
    plain = TIFUKNNRecommender(**PARAMS).fit_baskets(lines, items)
    assert plain.recommend([late], n=1, exclude_seen=False)["item_id"].tolist() == ["own39"]
    ranked = RankedTIFURecommender(
        **PARAMS, candidates=5, popular=2, min_customers=10, rounds=20
    ).fit_baskets(lines, items)
    assert ranked.ranker_ is not None
    assert ranked.recommend([late], n=1, exclude_seen=False)["item_id"].tolist() == ["hit"]
    loaded = Recommender.load(ranked.save(tmp_path / "ranked"))
    pd.testing.assert_frame_equal(
        loaded.recommend(["c00", late], n=3, exclude_seen=False),
        ranked.recommend(["c00", late], n=3, exclude_seen=False),
    )


def test_too_few_customers_with_three_baskets_leave_tifu_knn_as_it_is() -> None:
    lines, items = hit_baskets(customers=6)
    ranked = RankedTIFURecommender(**PARAMS, min_customers=10).fit_baskets(lines, items)
    plain = TIFUKNNRecommender(**PARAMS).fit_baskets(lines, items)
    assert ranked.ranker_ is None
    pd.testing.assert_frame_equal(
        ranked.recommend(["c05"], n=3, exclude_seen=False),
        plain.recommend(["c05"], n=3, exclude_seen=False),
    )


def test_a_posted_purchase_is_one_more_basket_in_the_rankers_counts() -> None:
    lines, items = hit_baskets()
    ranked = RankedTIFURecommender(**PARAMS, min_customers=10, rounds=20).fit_baskets(lines, items)
    row, hit, own = (
        ranked.customer_ids_.get_loc("c39"),
        items.get_loc("hit"),
        items.get_loc("own39"),
    )
    assert ranked.baskets_[row] == 4 and ranked.counts_[row, own] == 3
    assert (ranked.counts_[row, hit], ranked.last_[row, hit]) == (1, 4)
    # c39 buys its own item again (any quantity: a basket is binary); a newcomer buys "hit".
    bought = sp.csr_matrix(([2.0, 1.0], ([0, 1], [own, hit])), shape=(2, len(items)))
    ranked.partial_fit_users(["c39", "newcomer"], bought)
    assert ranked.baskets_[row] == 5
    assert (ranked.counts_[row, own], ranked.last_[row, own]) == (4, 5)
    assert (ranked.counts_[row, hit], ranked.last_[row, hit]) == (1, 4)  # not bought this time
    new = ranked.customer_ids_.get_loc("newcomer")
    assert ranked.baskets_[new] == 1 and ranked.last_[new, hit] == 1
    assert not ranked.recommend(["newcomer"], n=1, exclude_seen=False)["fallback"].any()
