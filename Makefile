# Fresh machine: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.vlprompt-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vlprompt demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when it collects no tests; make treats that as a failure.
test: $(STAMP) lint
	$(BIN)/python -m pytest

clean:
	rm -rf runs/demo .pytest_cache .ruff_cache
