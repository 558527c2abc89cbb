"""greedy: greedy layerwise training of CNNs with auxiliary problems."""

__version__ = "0.1.0"
