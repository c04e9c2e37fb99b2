# The two commands a newcomer needs: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck docs pytest browser fuzz clean bench soak compose-check

# tests/test_dashboard.py drives Debian's chromium, and Playwright launches it from here.
CHROMIUM := /usr/bin/chromium

# $(call require,CHECK,PACKAGE,WHO): when the shell command CHECK fails, install the Debian
# PACKAGE with apt-get if we are root (as `bench` installs wrk); if CHECK still fails, stop
# with one line saying what to install. WHO says what needs it.
define require
	@$(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing $(2) with apt-get ($(3) needs it)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	  fi; \
	  $(1) >/dev/null 2>&1 || { echo "make: $(3) needs Debian's $(2) package:" \
	    "install it (as root: apt-get install $(2)) and run make again" >&2; exit 1; }; \
	}
endef

$(STAMP): pyproject.toml
	$(call require,$(PYTHON) -c 'import ensurepip',python3-venv,$(PYTHON) -m venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make run PORT=8001 HOST=0.0.0.0`: each only when set, else COORDINATOR_PORT/HOST or defaults.
run: $(STAMP)
	$(BIN)/coordinator serve$(if $(HOST), --host $(HOST))$(if $(PORT), --port $(PORT))

# The browser comes first, so a machine that lacks it stops at once, not after the long run.
test: browser lint typecheck docs pytest

lint: $(STAMP)
	$(BIN)/ruff check coordinator tests
	$(BIN)/ruff format --check coordinator tests

typecheck: $(STAMP)
	$(BIN)/mypy coordinator

# Test files run in PYTEST_WORKERS parallel processes, each file whole on one of them (its module
# fixtures set up once); every test has its own key prefix and each worker its own Valkey, so
# they never meet. PYTEST_WORKERS=0 runs them in this process, as plain `pytest` does.
PYTEST_WORKERS ?= 3
pytest: $(STAMP) browser
	$(BIN)/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

browser:
	$(call require,test -x $(CHROMIUM),chromium,tests/test_dashboard.py)
	$(call require,/sbin/ldconfig -p | grep -q libatomic.so.1,libatomic1,Playwright's driver)
	$(call require,command -v zsh,zsh,tests/test_cli_completion.py)
	$(call require,command -v fish,fish,tests/test_cli_completion.py)
	$(call require,command -v promtool,prometheus,tests/test_prometheus_rules.py)
	$(call require,command -v curl,curl,tests/test_readme_examples.py)

# The Python API reference, from the docstrings (open build/api/index.html). `-W error` turns
# every warning pdoc gives (an annotation it cannot resolve, a module it cannot import) into a
# failure. The Store's mixins (registry, runs) are listed so its inherited operations show
# under Store: pdoc hides members inherited from a module it does not document.
API_MODULES := coordinator.client coordinator.store coordinator.registry coordinator.runs \
	coordinator.errors coordinator.models
docs: $(STAMP)
	rm -rf build/api
	$(BIN)/python -W error -m pdoc --docformat markdown --output-directory build/api $(API_MODULES)

# Not part of `make test`, where Hypothesis draws the same examples every run (the `gate`
# profile, tests/conftest.py): the fuzz and model tests with new examples every run, ten times
# as many (the `explore` profile; a few minutes).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=explore $(BIN)/pytest tests/test_fuzz.py tests/test_state_machine.py \
	  tests/test_lease_id.py --timeout=1800 $(PYTEST_ARGS)

# Not part of `make test`: measures the service against its ceilings on one private Valkey,
# prints a table and writes bench/results.json (a few minutes). The HTTP load comes from wrk,
# the side-by-side figure from Debian's postgresql (and asyncpg, the `bench` extra), both
# installed here when missing if we are root on Debian/Ubuntu; the dashboard's render needs
# chromium, as its tests do.
bench: $(STAMP)
	$(call require,test -x $(CHROMIUM),chromium,the dashboard figure of bench/scale.py)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bench: installing postgresql with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  fi; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo "bench: postgresql is" \
	    "missing and could not be installed (needs root and apt-get): its figure is skipped"; \
	}
	@$(BIN)/python -c 'import asyncpg' 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
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

# Not part of `make test` (it needs a container engine): brings compose.yaml up with `docker
# compose`, else podman-compose (COMPOSE_CHECK_ENGINE=docker or podman picks one), checks it
# through nginx and takes it down (deploy/compose_check.py says what it checks; a few minutes
# on a cold build cache). With podman and no podman-compose, installs the tested one here.
PODMAN_COMPOSE := podman-compose==1.6.0
compose-check: $(STAMP)
	@if [ "$${COMPOSE_CHECK_ENGINE:-}" != docker ] && command -v podman >/dev/null 2>&1 \
	  && ! command -v podman-compose >/dev/null 2>&1 && [ ! -x $(BIN)/podman-compose ] \
	  && { [ "$${COMPOSE_CHECK_ENGINE:-}" = podman ] || ! docker compose version >/dev/null 2>&1; }; \
	then echo "compose-check: installing $(PODMAN_COMPOSE) into $(VENV)"; \
	  $(BIN)/pip install --quiet '$(PODMAN_COMPOSE)'; fi
	$(BIN)/python deploy/compose_check.py

clean:
	rm -rf $(VENV) .coordinator-data .mypy_cache .ruff_cache
