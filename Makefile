# The two commands a newcomer needs: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest clean bench soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/coordinator serve

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check coordinator tests
	$(BIN)/ruff format --check coordinator tests

typecheck: $(STAMP)
	$(BIN)/mypy coordinator

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Not part of `make test`: measures the service against its ceilings on one private Valkey,
# prints a table and writes bench/results.json (a few minutes). The HTTP load comes from wrk,
# installed here when missing if we are root on Debian/Ubuntu.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bench: installing wrk with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  fi; \
	  command -v wrk >/dev/null 2>&1 || echo "bench: wrk is missing and could not be installed" \
	    "(needs root and apt-get): the HTTP figure falls back to a Python load generator," \
	    "which may be the bottleneck; its CPU is reported beside it"; \
	}
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Not part of `make test`: the exclusion checker of tests/test_exclusion.py for 5 minutes.
soak: $(STAMP)
	$(BIN)/python -m tests.soak --seconds $${SOAK_SECONDS:-300}

clean:
	rm -rf $(VENV) .coordinator-data .mypy_cache .ruff_cache
