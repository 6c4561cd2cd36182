# `make run` trains the default experiment; `make test` runs ruff + pytest. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format clean paper benchmark-digits

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m da.run $(ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Two pytest workers (CI has 2 cores), one thread each: most of the time is subprocesses and small runs.
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2

paper: install
	$(PY) paper/build.py

benchmark-digits: install
	$(PY) -m benchmarks.run suite=digits

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
