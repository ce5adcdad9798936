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
from models.recommenders.ranked import RankedTIFURecommender

__all__ = [
    "ALSRecommender",
    "BPRRecommender",
    "EASERecommender",
    "ItemKNNRecommender",
    "ModelFitError",
    "PopularityRecommender",
    "RankedTIFURecommender",
    "Recommender",
    "TIFUKNNRecommender",
    "UnknownItemError",
]
