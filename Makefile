# Two commands on a fresh clone: `make demo` and `make test`.
# Both create .venv when missing and install what they need into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Pinned: an unpinned torch pulls a multi-GB CUDA build onto CPU-only machines.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/elasticfl run examples/digits.yaml

# tests/isolated starts Ray clusters of its own (see its docstrings): a pytest process of its
# own, after the main suite, which pyproject's addopts keeps out of the first run.
test: $(STAMP)
	$(PY) -m pytest -q
	$(PY) -m pytest -q tests/isolated -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/run.py --workload W1 --peer flower

clean:
	rm -rf $(VENV) elasticfl-runs .pytest_cache
