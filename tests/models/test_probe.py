"""The probe that keeps a model answering NaN or nothing from being registered or served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.probe import UnusableModelError, probe_forecast, probe_recommender
from models.recommenders import ALSRecommender, EASERecommender
from tests.models.test_recommenders import checkerboard


def test_a_sound_recommender_passes() -> None:
    probe_recommender(EASERecommender(l2=1.0).fit(checkerboard()))


def test_nan_factors_are_refused() -> None:
    model = ALSRecommender(factors=4, iterations=3).fit(checkerboard())
    model.item_factors_ = np.full_like(model.item_factors_, np.nan)
    with pytest.raises(UnusableModelError, match="gave no items to 40 of 41"):
        probe_recommender(model)


def test_nan_or_empty_forecasts_are_refused() -> None:
    good = pd.DataFrame({"mean": [1.0, 2.0], "p10": [0.0, 1.0], "p50": [1.0, 2.0], "p90": [2, 4]})
    probe_forecast(good)
    with pytest.raises(UnusableModelError, match="1 of 2 rows"):
        probe_forecast(good.assign(p90=[2.0, np.nan]))
    with pytest.raises(UnusableModelError, match="forecasts nothing"):
        probe_forecast(good.iloc[:0])
