"""What a fitted model can refuse, by kind, so callers map refusals by type, not by message."""

from __future__ import annotations


class UnknownIdError(KeyError, ValueError):
    """An id (store, item, customer) the model has never seen (a ValueError for callers that
    treat every bad input alike, a KeyError for those that look ids up)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class BeyondModelError(ValueError):
    """A valid request the fitted model cannot answer (e.g. a horizon beyond its own)."""


class NoChampion(LookupError):
    """The model registry has no champion of a model yet (``omni train`` makes one)."""


class UnreadableChampion(LookupError):
    """The champion's files cannot be read (removed, cut short); training replaces it."""
