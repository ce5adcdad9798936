"""Metrics against cases worked by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from models.evaluation import catalogue_coverage, ranking_metrics


def recs(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "item_id", "rank"])


def truth(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "item_id"])


def test_hand_worked_two_customers() -> None:
    # u1: top-3 = a (hit), b, c (hit); relevant = {a, c, d}.  u2: top-3 = x, y, z; relevant = {z}.
    r = recs(
        [
            ("u1", "a", 1),
            ("u1", "b", 2),
            ("u1", "c", 3),
            ("u2", "x", 1),
            ("u2", "y", 2),
            ("u2", "z", 3),
        ]
    )
    t = truth([("u1", "a"), ("u1", "c"), ("u1", "d"), ("u2", "z")])
    m = ranking_metrics(r, t, k=3)
    # precision: u1 2/3, u2 1/3 -> 0.5
    assert m["precision@3"] == pytest.approx(0.5)
    # recall: u1 2/3, u2 1/1 -> 5/6
    assert m["recall@3"] == pytest.approx(5 / 6)
    # MAP: u1 (1/1 + 2/3) / 3 = 5/9; u2 (1/3) / 1 = 1/3 -> (5/9 + 1/3) / 2 = 4/9
    assert m["map"] == pytest.approx(4 / 9)
    # nDCG: u1 DCG = 1 + 1/log2(4) = 1.5, IDCG(3 relevant) = 1 + 1/log2(3) + 1/2;
    #       u2 DCG = 1/2, IDCG(1) = 1
    u1 = 1.5 / (1 + 1 / math.log2(3) + 0.5)
    assert m["ndcg@3"] == pytest.approx((u1 + 0.5) / 2)


def test_cut_off_and_customers_outside_truth_are_ignored() -> None:
    r = recs([("u1", "a", 1), ("u1", "b", 2), ("u9", "a", 1)])
    t = truth([("u1", "b")])
    m = ranking_metrics(r, t, k=1)
    assert m == {"map": 0.0, "ndcg@1": 0.0, "precision@1": 0.0, "recall@1": 0.0}
    m2 = ranking_metrics(r, t, k=2)
    assert m2["precision@2"] == pytest.approx(0.5) and m2["map"] == pytest.approx(0.5)


def test_perfect_ranking_scores_one() -> None:
    r = recs([("u", "a", 1), ("u", "b", 2)])
    m = ranking_metrics(r, truth([("u", "a"), ("u", "b")]), k=2)
    assert m == {"map": 1.0, "ndcg@2": 1.0, "precision@2": 1.0, "recall@2": 1.0}


def test_coverage() -> None:
    assert catalogue_coverage(recs([("u", "a", 1), ("v", "a", 1), ("v", "b", 2)]), 4) == 0.5
