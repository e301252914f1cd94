# Quick start on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.selfkd-installed
SLURM_LOCAL := scripts/slurm-local.sh
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
# As root on a machine with apt (CI), a real one-node Slurm cluster (scripts/slurm-local.sh) is started for
# tests/test_slurm_cluster.py and stopped after pytest, whatever its outcome (pytest's exit code is make's); a cluster
# that does not come up fails make test. Elsewhere, or with SELFKD_SLURM=0, those tests skip and say why.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	@pytest="ONEDNN_MAX_CPU_ISA=$${ONEDNN_MAX_CPU_ISA:-AVX2} $(BIN)/python -m pytest -q"; \
	if [ "$${SELFKD_SLURM:-1}" != 0 ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  holder=$$$$; trap 'SELFKD_SLURM_HOLDER=$$holder bash $(SLURM_LOCAL) down' EXIT; trap 'exit 130' INT TERM HUP; \
	  SELFKD_SLURM_HOLDER=$$holder bash $(SLURM_LOCAL) up || { echo "make test: the Slurm test cluster did not start" \
	    "(SELFKD_SLURM=0 make test runs without it)"; exit 1; }; \
	  pytest="SELFKD_REQUIRE_SLURM=1 $$pytest"; \
	fi; \
	echo "$$pytest"; eval "$$pytest"

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
