# `make run` and `make test` do all set-up themselves on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint bench venv clean

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

test: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
