PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,celery]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/propeller demo

# Workers: one more than the cores (much of the suite waits on real time: live scenarios, liveness
# timeouts); each test file runs whole on one worker, so its module fixtures are built once.
# TEST_WORKERS=0 runs serially (e.g. to debug one test); PYTEST_ARGS adds pytest options.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check orchestrator proplets twin hil tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m pytest tests/bench --benchmark-enable -q

clean:
	rm -rf $(VENV) build *.egg-info
