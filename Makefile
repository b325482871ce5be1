# letta-ops: `make demo` and `make test` do all the set-up on a machine with Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install test test-fast fuzz demo lint bench clean

# The versions come from uv.lock (`uv lock` after editing pyproject.toml's dependencies); the
# project itself is installed editable on top, without resolving anything again.
# Compiled to bytecode at install (uv does not by default, and with PYTHONDONTWRITEBYTECODE set
# nothing is cached at run time): every command, test subprocess and bench run would otherwise
# compile Prefect and the rest from source first, seconds per process (issue #32). compileall,
# not uv's --compile-bytecode, so that a venv installed before is compiled too.
$(BIN)/.installed: pyproject.toml uv.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade uv
	$(BIN)/uv export --quiet --frozen --extra test --extra demo --no-emit-project \
		-o $(VENV)/requirements.lock.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r $(VENV)/requirements.lock.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 letta_ops blocks cli flows tasks \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	touch $@

install: $(BIN)/.installed

## The whole suite, real Letta servers, PostgreSQL, S3 and Prefect included.
test: install
	$(BIN)/pytest -n 2 --dist loadfile

## Only the fast tests (no Letta servers).
test-fast: install
	$(BIN)/pytest -m "not e2e"

## Random kill points: N killed runs (default 10), each followed by recover twice; the seed
## is printed, SEED=... replays its draws (tests/test_fuzz_kill_e2e.py).
N ?= 10
fuzz: install
	LETTA_OPS_FUZZ_TRIALS=$(N) LETTA_OPS_FUZZ_SEED=$(SEED) $(BIN)/pytest -s -p no:randomly \
		tests/test_fuzz_kill_e2e.py

## Embedded PostgreSQL + pgvector, a pinned Letta with sample agents, local S3 (the `demo`
## extra, installed by `install`): the main job.
demo: install
	$(BIN)/letta-ops demo

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.cli_latency
	$(BIN)/python -m bench.fleet_backup
	$(BIN)/python -m bench.encryption_ratio

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
