"""Ranking metrics, as the microsoft/recommenders benchmark defines them (binary relevance).

For each customer in both the recommendations and the truth, with the top ``k`` recommended
items and the set of relevant (test) items:

* precision@k = hits / k
* recall@k = hits / |relevant|
* nDCG@k = DCG / IDCG, DCG = sum over hits of 1 / log2(rank + 1), IDCG over min(|relevant|, k)
* MAP = (sum over hits of precision at that hit's rank) / |relevant|  (their ``map``)

Each is averaged over those customers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def ranking_metrics(
    recommended: pd.DataFrame, relevant: pd.DataFrame, k: int = 10
) -> dict[str, float]:
    """MAP, nDCG@k, precision@k and recall@k.

    Args:
        recommended: ``customer_id, item_id, rank`` (rank 1 = best).
        relevant: ``customer_id, item_id`` — the held-out items.
        k: cut-off.
    """
    top = recommended[recommended["rank"] <= k][["customer_id", "item_id", "rank"]]
    truth = relevant[["customer_id", "item_id"]].drop_duplicates()
    n_relevant = truth.groupby("customer_id").size().rename("n_relevant")
    users = pd.Index(top["customer_id"].unique()).intersection(n_relevant.index)
    if len(users) == 0:
        return {"map": 0.0, f"ndcg@{k}": 0.0, f"precision@{k}": 0.0, f"recall@{k}": 0.0}
    hits = top.merge(truth, on=["customer_id", "item_id"])
    hits = hits[hits["customer_id"].isin(users)].sort_values(["customer_id", "rank"])
    hits["hit_number"] = hits.groupby("customer_id").cumcount() + 1
    hits["gain"] = 1.0 / np.log2(hits["rank"] + 1.0)
    hits["precision_at_hit"] = hits["hit_number"] / hits["rank"]
    per_user = hits.groupby("customer_id").agg(
        hits=("rank", "size"), dcg=("gain", "sum"), ap=("precision_at_hit", "sum")
    )
    per_user = per_user.reindex(users, fill_value=0.0).join(n_relevant)
    ideal_gains = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = ideal_gains[np.minimum(per_user["n_relevant"].to_numpy(), k) - 1]
    return {
        "map": float((per_user["ap"] / per_user["n_relevant"]).mean()),
        f"ndcg@{k}": float((per_user["dcg"] / idcg).mean()),
        f"precision@{k}": float((per_user["hits"] / k).mean()),
        f"recall@{k}": float((per_user["hits"] / per_user["n_relevant"]).mean()),
    }


def catalogue_coverage(recommended: pd.DataFrame, n_items: int) -> float:
    """Share of the catalogue that appears in at least one recommendation list."""
    return recommended["item_id"].nunique() / n_items if n_items else 0.0
