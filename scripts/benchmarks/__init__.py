"""One module per benchmark of scripts/bench.py: steps, precision, inputs (crop + flip, ImageNet decode), cache,
pipeline; common.py holds what they share."""
