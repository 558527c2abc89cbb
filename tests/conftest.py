import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

# A small, fast digits run: what most training tests use.
TINY = ["--widths", "16,16,32", "--downsample", "3", "--batch-size", "64", "--lr", "0.05", "--no-progress"]


@pytest.fixture
def root() -> Path:
    return ROOT
