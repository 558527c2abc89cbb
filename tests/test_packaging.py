"""The distribution's name: `greedy` on the package index is someone else's package, so ours is greedy-layerwise,
imported as `greedy`."""

import importlib.metadata
import re

import greedy
from tests.helpers import ROOT


def test_the_distribution_is_greedy_layerwise_imported_as_greedy():
    text = (ROOT / "pyproject.toml").read_text()  # tomllib is Python 3.11+; the project supports 3.10
    assert re.search(r'^name = "(.+)"$', text, re.M).group(1) == "greedy-layerwise"
    dist = importlib.metadata.distribution("greedy-layerwise")  # what `make setup` installed
    assert dist.version == re.search(r'^version = "(.+)"$', text, re.M).group(1)
    assert greedy.__name__ == "greedy" and "pip install -e DIR" in (ROOT / "README.md").read_text()
