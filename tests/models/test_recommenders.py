"""One contract suite, run against every recommender."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.interactions import Interactions
from models.recommenders import (
    ALSRecommender,
    BPRRecommender,
    EASERecommender,
    ItemKNNRecommender,
    ModelFitError,
    PopularityRecommender,
    RankedTIFURecommender,
    Recommender,
    TIFUKNNRecommender,
    UnknownItemError,
)
from models.recommenders.base import replace_rows

# Small, fast settings; every model must solve the checkerboard with them.
PERSONALISED = {
    "als": lambda: ALSRecommender(factors=8, regularization=1.0, alpha=10.0, iterations=30),
    "bpr": lambda: BPRRecommender(factors=8, learning_rate=0.05, iterations=300),
    "bm25": lambda: ItemKNNRecommender(similarity="bm25", neighbours=20),
    "cosine": lambda: ItemKNNRecommender(similarity="cosine", neighbours=20),
    "ease": lambda: EASERecommender(l2=1.0),
    "tifu_knn": lambda: TIFUKNNRecommender(neighbours=10, alpha=0.5),
    # Fitted on a matrix, without baskets: its first stage (the ranker: tests/models/test_ranked).
    "tifu_ranked": lambda: RankedTIFURecommender(neighbours=10, alpha=0.5),
}
ALL = {**PERSONALISED, "popularity": PopularityRecommender}


def checkerboard() -> Interactions:
    """40 customers, 12 items in two tastes: customer u (first 20: items 0-5; last 20: items 6-11)
    has every item of their taste but one, item u % 6 of it — the right first answer."""
    rows, cols = [], []
    for u in range(40):
        half = 0 if u < 20 else 6
        for i in range(6):
            if i != u % 6:
                rows.append(u)
                cols.append(half + i)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(40, 12))
    return Interactions(
        matrix,
        pd.Index([f"c{u:02d}" for u in range(40)]),
        pd.Index([f"i{i:02d}" for i in range(12)]),
    )


@pytest.fixture(params=sorted(ALL), scope="module")
def fitted(request: pytest.FixtureRequest) -> tuple[str, Recommender]:
    return request.param, ALL[request.param]().fit(checkerboard())


def test_recommendations_have_the_right_shape_and_never_repeat_history(fitted) -> None:
    _, model = fitted
    data = checkerboard()
    recs = model.recommend(list(data.customer_ids), n=3)
    assert list(recs.columns) == ["customer_id", "item_id", "score", "rank", "fallback"]
    assert (recs.groupby("customer_id").size() == 3).all()
    assert recs.groupby("customer_id")["rank"].apply(list).map(lambda r: r == [1, 2, 3]).all()
    assert not recs["fallback"].any()
    seen = {
        (data.customer_ids[u], data.item_ids[i])
        for u, i in zip(*data.matrix.nonzero(), strict=True)
    }
    assert not any(
        (c, i) in seen for c, i in zip(recs["customer_id"], recs["item_id"], strict=True)
    )
    scores = recs.groupby("customer_id")["score"].apply(lambda s: bool((np.diff(s) <= 0).all()))
    assert scores.all()


def test_personalised_models_find_the_missing_item_of_their_taste(fitted) -> None:
    name, model = fitted
    if name == "popularity":
        pytest.skip("popularity is not personalised (see the popularity test)")
    data = checkerboard()
    top = model.recommend(list(data.customer_ids), n=1).set_index("customer_id")["item_id"]
    expected = {f"c{u:02d}": f"i{(0 if u < 20 else 6) + u % 6:02d}" for u in range(40)}
    hits = np.mean([top[c] == item for c, item in expected.items()])
    assert hits >= 0.95, f"{name}: {hits:.0%}"


def test_popularity_recommends_the_most_bought_unseen_items() -> None:
    data = checkerboard()
    recs = PopularityRecommender().fit(data).recommend(["c00", "c39"], n=1)
    counts = np.asarray(data.matrix.sum(axis=0)).ravel()
    # c00 has seen items 1..5; the most bought of the rest (ties: lowest id) is item 6 or later.
    unseen = [i for i in range(12) if data.matrix[0, i] == 0]
    best = max(unseen, key=lambda i: (counts[i], -i))
    assert recs.set_index("customer_id").loc["c00", "item_id"] == f"i{best:02d}"


def test_unknown_and_history_less_customers_get_the_flagged_fallback(fitted) -> None:
    _, model = fitted
    recs = model.recommend(["nobody", "c00"], n=2)
    assert recs.loc[recs["customer_id"] == "nobody", "fallback"].all()
    assert len(recs[recs["customer_id"] == "nobody"]) == 2
    assert not recs.loc[recs["customer_id"] == "c00", "fallback"].any()


def test_similar_items_and_unknown_items(fitted) -> None:
    name, model = fitted
    similar = model.similar_items(["i00", "i07"], n=3)
    assert list(similar.columns) == ["item_id", "similar_item_id", "score", "rank"]
    assert (similar["item_id"] != similar["similar_item_id"]).all()
    if name != "popularity":
        first = similar.groupby("item_id")["similar_item_id"].first()
        assert first["i00"] < "i06" <= first["i07"]  # neighbours come from the same taste
    with pytest.raises(UnknownItemError, match="Unknown item id"):
        model.similar_items(["i00", "nope"])


def test_same_seed_same_model_and_save_load_round_trip(fitted, tmp_path: Path) -> None:
    name, model = fitted
    again = ALL[name]().fit(checkerboard())
    ids = [*checkerboard().customer_ids, "nobody"]
    expected = model.recommend(ids, n=4)
    pd.testing.assert_frame_equal(expected, again.recommend(ids, n=4))
    loaded = Recommender.load(model.save(tmp_path / name))
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    pd.testing.assert_frame_equal(expected, loaded.recommend(ids, n=4))
    pd.testing.assert_frame_equal(
        model.similar_items(["i03"], n=3), loaded.similar_items(["i03"], n=3)
    )
    assert not any(p.suffix in {".pkl", ".pickle"} for p in (tmp_path / name).iterdir())


def test_refit_replaces_state(fitted) -> None:
    name, _ = fitted
    model = ALL[name]().fit(checkerboard())
    small = Interactions(
        sp.csr_matrix(np.eye(3, dtype=np.float32)),
        pd.Index(["a", "b", "c"]),
        pd.Index(["x", "y", "z"]),
    )
    model.fit(small)
    assert list(model.item_ids_) == ["x", "y", "z"] and model.user_items_.shape == (3, 3)
    assert set(model.recommend(["a"], n=5)["item_id"]) <= {"y", "z"}


def test_allowed_mask_and_exclusions_are_respected(fitted) -> None:
    _, model = fitted
    allowed = np.array([i % 2 == 0 for i in range(12)])
    exclude = sp.csr_matrix(np.eye(2, 12, k=6, dtype=bool))  # c00 excludes i06, c01 i07
    recs = model.recommend(["c00", "c01"], n=12, allowed=allowed, exclude=exclude)
    assert recs["item_id"].map(lambda i: int(i[1:]) % 2 == 0).all()
    assert "i06" not in set(recs.loc[recs["customer_id"] == "c00", "item_id"])


def test_not_fitted_and_bad_arguments() -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        EASERecommender().recommend(["c00"])
    with pytest.raises(ValueError, match="n must be at least 1"):
        EASERecommender(l2=1.0).fit(checkerboard()).recommend(["c00"], n=0)
    with pytest.raises(ValueError, match="similarity must be"):
        ItemKNNRecommender(similarity="jaccard").fit(checkerboard())


def test_every_model_a_config_may_name_is_one_this_suite_fits() -> None:
    """Regression: the factor models' shared base was listed as the model "base", and a config
    naming it stopped training with an AttributeError."""
    assert "base" not in Recommender.registry
    assert set(Recommender.registry) == {m().name for m in ALL.values()}


def test_ease_refuses_a_catalogue_above_its_limit() -> None:
    with pytest.raises(ValueError, match="max_items=10"):
        EASERecommender(max_items=10).fit(checkerboard())


def test_diverging_training_raises_a_named_error() -> None:
    with pytest.raises(ModelFitError, match="non-finite"):
        BPRRecommender(factors=8, learning_rate=1e30, iterations=20).fit(checkerboard())


@pytest.mark.parametrize("name", sorted(ALL))
def test_partial_fit_users_takes_effect_at_once(name: str) -> None:
    model = ALL[name]().fit(checkerboard())
    # c00 buys their missing item i00; a new customer arrives with five items of the second taste.
    additions = sp.csr_matrix(
        (np.ones(6, np.float32), ([0, 1, 1, 1, 1, 1], [0, 6, 7, 8, 9, 10])), shape=(2, 12)
    )
    model.partial_fit_users(["c00", "newcomer"], additions)
    recs = model.recommend(["c00", "newcomer"], n=1)
    assert "i00" not in set(recs[recs["customer_id"] == "c00"]["item_id"])
    newcomer = recs[recs["customer_id"] == "newcomer"]
    assert not newcomer["fallback"].any()
    if name in PERSONALISED:
        assert newcomer["item_id"].tolist() == ["i11"]
    # A return takes the history back: the item may be recommended again.
    model.partial_fit_users(["c00"], sp.csr_matrix(([-1.0], ([0], [0])), shape=(1, 12)))
    assert model.user_items_[model.customer_ids_.get_loc("c00"), 0] == 0


@pytest.mark.parametrize("name", sorted(ALL))
def test_posting_events_rewrites_only_their_customers_rows(name: str) -> None:
    model = ALL[name]().fit(checkerboard())
    before = model.user_items_
    snapshot = before.toarray()
    additions = sp.csr_matrix(([2.0, 1.0], ([0, 1], [0, 7])), shape=(2, 12), dtype=np.float32)
    model.partial_fit_users(["c05", "newcomer"], additions)
    after = model.user_items_.toarray()
    np.testing.assert_array_equal(before.toarray(), snapshot)  # a reader's matrix never moves
    assert after.shape == (41, 12) and model.customer_ids_[-1] == "newcomer"
    untouched = [r for r in range(40) if r != 5]
    np.testing.assert_array_equal(after[untouched], snapshot[untouched])
    assert after[5, 0] > 0 and after[40, 7] > 0 and np.count_nonzero(after[40]) == 1


@pytest.mark.parametrize("replaced", [6, 1500])  # spans copied between rows; one gather
def test_replace_rows_copies_the_untouched_rows_and_appends_new_ones(replaced: int) -> None:
    rng = np.random.default_rng(1)
    matrix = sp.random(2000, 30, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    # Out of order, the first and the last row, two new rows after them.
    rows = np.concatenate(
        [[1999, 0, 2000, 2001], rng.choice(np.arange(1, 1999), replaced - 4, replace=False)]
    )
    rng.shuffle(rows)
    values = sp.random(replaced, 30, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    values[0] = 0  # a history emptied
    values.eliminate_zeros()
    expected = np.vstack([matrix.toarray(), np.zeros((2, 30), np.float32)])
    expected[rows] = values.toarray()
    before = matrix.toarray()
    np.testing.assert_array_equal(replace_rows(matrix, rows, values).toarray(), expected)
    np.testing.assert_array_equal(matrix.toarray(), before)
    none = replace_rows(matrix, np.zeros(0, dtype=np.int64), sp.csr_matrix((0, 30)))
    np.testing.assert_array_equal(none.toarray(), matrix.toarray())


def test_tifu_knn_rebuilds_its_neighbourhood_once_1_percent_of_customers_changed() -> None:
    rng = np.random.default_rng(2)
    matrix = sp.csr_matrix((rng.random((300, 12)) < 0.4).astype(np.float32))
    ids = pd.Index([f"c{u:03d}" for u in range(300)])
    model = TIFUKNNRecommender(neighbours=10).fit(Interactions(matrix, ids, pd.Index(range(12))))
    neighbourhood = model.neighbourhood_
    bought = sp.csr_matrix(([1.0], ([0], [3])), shape=(1, 12), dtype=np.float32)
    model.partial_fit_users(["c000"], bought)
    model.partial_fit_users(["c001"], bought)
    model.partial_fit_users(["c000"], bought)  # the same customer again
    model.partial_fit_users([f"c1{i:02d}" for i in range(50)], sp.csr_matrix((50, 12)))  # views
    model.partial_fit_users([], sp.csr_matrix((0, 12)))  # nothing the model knows: nothing done
    assert model.neighbourhood_ is neighbourhood  # 2 of 300 changed: neighbours as they were,
    assert model.scores_for("c000")[0][3] > 0  # but c000's own history counts at once
    model.partial_fit_users(["c002"], bought)  # the third makes 1%
    assert model.neighbourhood_ is not neighbourhood
    np.testing.assert_array_equal(model.neighbourhood_[1].toarray(), model.user_items_.toarray())


@pytest.mark.parametrize("name", ["als", "bpr", "ease"])
def test_an_unknown_customer_with_context_is_scored_from_it(name: str) -> None:
    model = ALL[name]().fit(checkerboard())
    context = sp.csr_matrix((np.ones(5, np.float32), ([0] * 5, [6, 7, 8, 9, 10])), shape=(1, 12))
    top = model.recommend(["stranger"], n=1, extra_history=context)
    assert top["item_id"].tolist() == ["i11"] and not top["fallback"].any()


def test_a_purchase_posted_to_tifu_knn_is_a_new_newest_group() -> None:
    model = TIFUKNNRecommender(neighbours=5, alpha=0.5, across=0.6).fit(checkerboard())
    before = model.user_items_[0].toarray().ravel()  # c00: items 1-5; a row is one basket
    # c00 buys i00 (any quantity, and a view beside it counts the same: a basket is binary).
    model.partial_fit_users(["c00"], sp.csr_matrix(([3.0, 1.0], ([0, 0], [0, 1])), shape=(1, 12)))
    after = model.user_items_[0].toarray().ravel()
    basket = np.zeros(12)
    basket[[0, 1]] = 1
    # Two groups now, the old one decayed: (basket + 0.6 * 1 * before) / 2.
    np.testing.assert_allclose(after, (basket + 0.6 * before) / 2, rtol=1e-6)
    assert model.baskets_[0] == 2
    # c00's own vector now holds i00, so TIFU scores it (repeat purchases are its point).
    scores, fallback = model.scores_for("c00")
    assert not fallback and scores[0] > 0


def test_a_return_posted_to_tifu_knn_takes_the_item_out_of_the_vector() -> None:
    from features.baskets import BASKET_WEIGHTS
    from features.interactions import event_weights

    model = TIFUKNNRecommender(neighbours=5, alpha=0.5).fit(checkerboard())
    returned = pd.DataFrame({"event_type": ["return"], "quantity": [2.0]})
    weight = event_weights(returned, BASKET_WEIGHTS)  # what the service adds for a return
    model.partial_fit_users(["c00"], sp.csr_matrix((weight, ([0], [1])), shape=(1, 12)))
    assert model.user_items_[0, 1] == 0 and model.user_items_[0, 2] > 0
    assert model.baskets_[0] == 1  # a return is no new basket


@pytest.mark.parametrize(
    ("model", "refusal"),
    [
        (lambda: ItemKNNRecommender(neighbours=0), "neighbours must be a whole number"),
        (lambda: ItemKNNRecommender(neighbours=-3), "neighbours must be a whole number"),
        (lambda: ALSRecommender(factors=0), "factors must be a whole number"),
        (lambda: BPRRecommender(iterations=2.5), "iterations must be a whole number"),
        (lambda: EASERecommender(l2=-1.0), "l2 must be above 0"),
    ],
)
def test_a_parameter_out_of_range_is_refused_in_one_sentence(model, refusal: str) -> None:
    """Regression: item-kNN with 0 neighbours crashed the process inside implicit; ALS with 0
    factors scored every item 0 and was registered; EASE took a negative l2."""
    with pytest.raises(ValueError, match=refusal):
        model().fit(checkerboard())
