# `make train`: set up (once) and train greedily on the offline default (digits).
# `make test`: set up (once) and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The tested torch pair; pyproject.toml states the compatible ranges.
TORCH := torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/digits_k2.yaml
ARGS ?=

.PHONY: setup train test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

train: setup
	$(PY) train.py -c $(CONFIG) $(ARGS)

test: setup
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
