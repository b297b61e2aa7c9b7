# The README's two commands: `make demo` (main job) and `make test` (the suite, as CI runs it).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/unlearnd demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -rs

bench: $(STAMP)
	$(BIN)/python -m bench.all

bench-quick: $(STAMP)
	$(BIN)/python -m bench.all --quick

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
