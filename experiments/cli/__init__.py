"""``omni``: the one command line of omnichannel-ml, one module per command group."""

from experiments.cli import bench, data, placement, service, stock, train  # noqa: F401 (they register)
from experiments.cli.app import app, main

__all__ = ["app", "main"]
