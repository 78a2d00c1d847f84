# patrol-agent: set-up, demo, tests. `make demo` and `make test` do all the set-up themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint types unit bench soak clean api-docs install uninstall

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml tools/ensure-system-deps.sh
	PY=$(PY) tools/ensure-system-deps.sh
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	tools/demo.sh

test: setup lint types unit

lint: setup
	$(BIN)/ruff check .

types: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

api-docs: setup
	$(BIN)/python -m agent.apidoc --write

bench: setup
	$(BIN)/python benchmarks/run.py

soak: setup
	$(BIN)/python tools/soak.py

install:
	DESTDIR=$(DESTDIR) PY=$(PY) tools/install.sh

uninstall:
	DESTDIR=$(DESTDIR) tools/install.sh --uninstall

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
