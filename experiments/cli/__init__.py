"""``omni``: the one command line of omnichannel-ml, one module per command group."""

from experiments.cli import (  # noqa: F401 (they register)
    bench,
    data,
    placement,
    report,
    score,
    service,
    stock,
    train,
)
from experiments.cli.app import app, main

__all__ = ["app", "main"]
