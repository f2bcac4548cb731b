# Set-up and everyday commands. Needs only python3 (3.11+) and make.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test processes side by side: the suite mostly waits on loopback servers and subprocesses,
# so twice the cores keeps them busy.
TEST_PROCESSES ?= $(shell echo $$(( $$(nproc) * 2 )))

.PHONY: demo demo-s3 test test-fast lint bench docs docs-config clean

## demo: create the virtualenv, install the worker, run one pass against the sandbox
demo: $(STAMP)
	$(BIN)/sync-worker demo

## demo-s3: the same, the archives going to a bucket of an S3 server on loopback (moto)
demo-s3: $(STAMP)
	$(BIN)/sync-worker demo --storage s3

## test: install the test extras and run the linter and the whole test suite, with coverage
test: $(STAMP)
	tools/ensure-postgresql
	$(BIN)/ruff check .
	$(BIN)/pytest --cov -n $(TEST_PROCESSES) --dist worksteal

## test-fast: the fast tier only (pure logic and the state layer; no process, no sleep), in seconds
test-fast: $(STAMP)
	tools/ensure-postgresql
	$(BIN)/pytest -m fast -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: measure throughput, memory and Total Expert requests (writes bench/results.md)
bench: $(STAMP)
	$(BIN)/python bench/run.py

## docs: build the manual in docs/ into site/, failing on a broken link
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

## docs-config: paste the config example and key table from sync_worker/config.py into the manual
docs-config: $(STAMP)
	$(BIN)/python tools/regen_config_docs.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo-data sandbox-data bench/work site
