# `make train`: set up (once) and train greedily on the offline default (digits).
# `make test`: set up (once) and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# constraints.txt pins the exact set the suite passed with; pyproject.toml states the compatible ranges.
CONSTRAINTS := constraints.txt
CONFIG ?= configs/digits_k2.yaml
ARGS ?=

.PHONY: setup train test test-kernels lint lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch torchvision
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

train: setup
	$(PY) train.py -c $(CONFIG) $(ARGS)

test: setup
	$(PY) -m pytest tests

# The tests marked `training` (where training lands, bit-identity of two trainings) under each of torch's x86 CPU
# kernel sets, as other machines would run them; a set this CPU lacks falls back to the best it has.
KERNELS ?= default avx2 avx512
test-kernels: setup
	set -e; for k in $(KERNELS); do echo "== ATEN_CPU_CAPABILITY=$$k"; \
	  ATEN_CPU_CAPABILITY=$$k $(PY) -m pytest tests -m training; done

# Rewrite constraints.txt from this environment (after upgrading a package and passing `make test`).
lock: setup
	{ sed -n '1,3p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | grep -v '^#'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
