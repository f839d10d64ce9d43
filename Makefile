# The two commands a newcomer needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all lint clean

# torch is pinned and installed first: a local CPU wheel, never a CUDA build.
# Debian's mricron-data brings the real whole-head Colin27 brain (optional: skipped without root/apt).
$(STAMP): pyproject.toml
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && [ ! -f /usr/share/mricron/templates/ch2.nii.gz ]; then \
		(apt-get install -y -q mricron-data >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q mricron-data >/dev/null 2>&1)) \
		|| echo "note: could not install mricron-data; the Colin27 whole-head brain will not be available"; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffiqt demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# Settings in pyproject.toml ([tool.ruff], [tool.mypy]); the same checks run as pre-commit hooks.
lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache .ruff_cache
