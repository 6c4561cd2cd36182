# `make run` trains the default experiment (installing only what a run needs); `make test` runs ruff + pytest
# (installing the dev tools too). Both create .venv first; then `.venv/bin/da ...` (or `source .venv/bin/activate`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: install install-run run test test-fast lint format clean paper tables docs benchmark-digits screenshot

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

# --no-compile: pip would byte-compile every installed module (torch's CUDA build, sympy, tensorboard, ...: ~2 of
# the 3 minutes of this install on 2 cores); the tests compile the modules they import, once (see test:).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --no-compile -e ".[dev]"
	touch $(STAMP) $(RUN_STAMP)

install-run: $(RUN_STAMP)

install: $(STAMP)

run: install-run
	$(VENV)/bin/da train $(ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Two pytest workers (CI has 2 cores), one thread each: most of the time is subprocesses and small runs; an idle
# worker takes pending tests from the other (worksteal), so one long test at the end does not leave a core idle.
# Bytecode is written (PYTHONDONTWRITEBYTECODE unset): the first process to import a module compiles it, and the
# other processes the tests start read the .pyc instead of compiling da and the uncompiled install again.
test: lint
	env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal

# the same without the tests marked slow (whole runs of tens of seconds, several processes): while editing
test-fast: lint
	env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal -m "not slow"

paper: install
	$(PY) paper/build.py

# README's and the paper's results tables, regenerated from benchmarks/results (tests/test_paper.py checks them)
tables: install-run
	$(PY) -m benchmarks.report --write

# the documentation site (docs/ + the API reference from the docstrings) in build/site; any warning is an error
docs: install
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) -m mkdocs build --strict

# a headless-Chromium screenshot of a run's report.html (apt-get install chromium): make screenshot RUN=<run folder>
screenshot:
	scripts/screenshot_report.sh $(RUN)

benchmark-digits: install
	$(PY) -m benchmarks.run suite=digits

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
