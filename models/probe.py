"""A last look at a model before it is promoted or served: its answers on a probe must be real.

A model can train without an error and still answer nothing useful — NaN factors, an empty
catalogue, a forecast of NaN. Training refuses to register such a model and the service refuses
to swap it in (the models being served stay).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.recommenders import Recommender

#: Known customers asked for recommendations in the probe (plus one unknown customer).
PROBE_CUSTOMERS = 50
QUANTILE_COLUMNS = ("mean", "p10", "p50", "p90")


class UnusableModelError(ValueError):
    """A model whose answers on the probe are empty or not finite (one sentence)."""


def probe_recommender(model: Recommender, n: int = 10) -> None:
    """Recommend for the first known customers and an unknown one; every list must be
    non-empty and every score finite.

    Raises:
        UnusableModelError: naming what is wrong.
    """
    customers = [*map(str, model.customer_ids_[:PROBE_CUSTOMERS]), "probe: unknown customer"]
    recommendations = model.recommend(customers, n=n, exclude_seen=False)
    scores = recommendations["score"].to_numpy(dtype=np.float64)
    answered = recommendations["customer_id"].nunique()
    if answered < len(customers):
        raise UnusableModelError(
            f"The {model.name} recommender gave no items to {len(customers) - answered} of "
            f"{len(customers)} probe customers."
        )
    if not np.isfinite(scores).all():
        raise UnusableModelError(
            f"The {model.name} recommender gives non-finite scores "
            f"({int((~np.isfinite(scores)).sum())} of {len(scores)} on the probe)."
        )


def probe_forecast(forecast: pd.DataFrame) -> None:
    """A forecaster's forecast of its own history's future must have rows and finite values.

    Raises:
        UnusableModelError: naming what is wrong.
    """
    if forecast.empty:
        raise UnusableModelError("The demand forecaster forecasts nothing.")
    values = forecast[list(QUANTILE_COLUMNS)].to_numpy(dtype=np.float64)
    bad = int((~np.isfinite(values)).any(axis=1).sum())
    if bad:
        raise UnusableModelError(
            f"The demand forecaster gives non-finite values in {bad} of {len(values)} rows."
        )
