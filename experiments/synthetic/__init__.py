"""A synthetic omnichannel retailer (see ``generator``)."""

from experiments.synthetic.generator import FORMATS, GeneratorConfig, generate

__all__ = ["FORMATS", "GeneratorConfig", "generate"]
