# The two commands a newcomer needs: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest clean

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

clean:
	rm -rf $(VENV) .coordinator-data .mypy_cache .ruff_cache
