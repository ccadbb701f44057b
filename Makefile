# `make run` and `make test` do all set-up themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

CHROMIUM ?= $(or $(BNLAB_CHROMIUM),/usr/bin/chromium)

.PHONY: run test check lint bench venv chromium clean

$(BIN)/.installed: pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the pinned wheel, so the project's torch range installs nothing more.
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	# the client is its own distribution (client/, imported as `bnlab`); one pip command, so
	# the server's bnlab-client requirement is met by the checkout's copy
	$(BIN)/pip install -q -e ./client -e ".[dev,bench]"
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/bnlab serve

# The browser tests drive Debian's chromium (playwright downloads no browser). As root, a missing
# one is installed; otherwise make stops at once with the command that installs it.
chromium:
	@if [ -x "$(CHROMIUM)" ] || command -v "$(CHROMIUM)" >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make test needs chromium for tests/e2e: run  sudo apt-get install -y chromium"; \
		exit 1; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint chromium
	$(BIN)/pytest -q -p no:cacheprovider

# The fast tier: no PostgreSQL, Redis, worker process or chromium (tests marked integration,
# which include the PostgreSQL runs of tests/models/db and the browser tests, are left out), and
# none of the slow ones (fresh venvs, fuzzing, ONNX exports, benchmark commands). One pytest-xdist
# process per core, each on one torch thread: N processes on N threads each would fight for cores.
check: lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -p no:cacheprovider -n auto -m "not integration and not slow"

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
