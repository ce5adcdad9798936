"""Recommenders behind one interface (see :mod:`models.recommenders.base`)."""

from models.recommenders.base import ModelFitError, Recommender, UnknownItemError
from models.recommenders.models import (
    ALSRecommender,
    BPRRecommender,
    EASERecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    TIFUKNNRecommender,
)

__all__ = [
    "ALSRecommender",
    "BPRRecommender",
    "EASERecommender",
    "ItemKNNRecommender",
    "ModelFitError",
    "PopularityRecommender",
    "Recommender",
    "TIFUKNNRecommender",
    "UnknownItemError",
]
