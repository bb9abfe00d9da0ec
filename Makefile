# The project's commands. `make demo` and `make test` do all setup on a fresh Debian machine.
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := reconciler plugins tests bench
TEST_JOBS ?= 2
# pytest-xdist processes for `make test`: each module runs whole in one of them (`--dist loadfile`),
# and each starts its own registry, Docker Engine and PostgreSQL when its tests need them.

.PHONY: setup demo test lint unit bench schemas clean

$(VENV)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh

$(VENV)/.installed-test: $(VENV)/.installed tests/js/package-lock.json
	VENV=$(VENV) scripts/setup.sh --test

setup: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/stella demo

lint: $(VENV)/.installed
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy reconciler $(filter-out %.egg-info,$(wildcard plugins/*/stella_*))
	$(BIN)/lint-imports --no-cache

unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

test: $(VENV)/.installed-test lint
	$(BIN)/pytest -n $(TEST_JOBS) --dist loadfile --durations=25

bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench_resolve.py
	$(BIN)/python bench/bench_reconcile.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_startup.py
	$(BIN)/python bench/bench_agent.py
	$(BIN)/python bench/bench_rollback.py
	$(BIN)/python bench/bench_drift.py
	$(BIN)/python bench/bench_fleet.py

schemas: $(VENV)/.installed
	$(BIN)/python -m reconciler.schemas

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
