"""Building blocks with no knowledge of whole networks."""

from senet.layers.squeeze_excite import SEConfig, SqueezeExcite

__all__ = ["SEConfig", "SqueezeExcite"]
