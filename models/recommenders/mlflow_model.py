"""The MLflow pyfunc wrapper of a saved recommender, logged as code (MLflow "models from code").

Nothing is pickled: MLflow stores this file and the model directory written by
``Recommender.save``; loading reads them back with ``Recommender.load``.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from models.recommenders.base import Recommender

ARTIFACT = "recommender"


class RecommenderModel(PythonModel):
    """``predict`` takes a frame with ``customer_id`` (and optional ``n`` in params)."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model = Recommender.load(context.artifacts[ARTIFACT])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        n = int((params or {}).get("n", 10))
        return self.model.recommend(model_input["customer_id"].astype("str").tolist(), n=n)


mlflow.models.set_model(RecommenderModel())
