# Quick start on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.selfkd-installed
FASHION_DIRS := /usr/share/datasets/fashion-mnist data/fashion-mnist

.PHONY: setup test demo fashion-mnist clean

setup: $(STAMP)

# torch first (pip takes the local build), then the project and its test tools.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch>=2.4" "torchvision>=0.19"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# oneDNN's AVX2 kernels are the ones that crashed (issue 19): the suite runs them on every processor, so an
# AVX-512 machine catches what an AVX2-only one would hit. Override with ONEDNN_MAX_CPU_ISA=DEFAULT.
test: $(STAMP)
	$(BIN)/ruff check src tests
	ONEDNN_MAX_CPU_ISA=$${ONEDNN_MAX_CPU_ISA:-AVX2} $(BIN)/python -m pytest -q

demo: $(STAMP) fashion-mnist
	$(BIN)/selfkd demo

# Real data without a download step: Debian's dataset-fashion-mnist package.
fashion-mnist:
	@for d in $(FASHION_DIRS); do [ -f $$d/train-images-idx3-ubyte.gz ] && exit 0; done; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || true; \
	fi; \
	for d in $(FASHION_DIRS); do [ -f $$d/train-images-idx3-ubyte.gz ] && exit 0; done; \
	echo "Fashion-MNIST not found. Install Debian's package (sudo apt-get install dataset-fashion-mnist)"; \
	echo "or put the four *-ubyte.gz files from github.com/zalandoresearch/fashion-mnist in ./data/fashion-mnist/."; \
	exit 1

clean:
	rm -rf $(VENV) runs .pytest_cache
