# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test setup clean

# torch is installed first, so that the project's plain `torch>=2.4` requirement adds nothing.
# Which build comes depends on pip's indexes: where a CPU wheel is on pip's find-links (this
# project's CI machines) it is that one; PyPI's Linux wheel is the CUDA build (GBs with its CUDA
# libraries). On a CPU-only machine pass PyTorch's CPU index, e.g.
#   make run TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/novarch-batch submit --count 256 --out ./novarch-out
	@echo "  (the commands above need the project's environment: source $(VENV)/bin/activate)"

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) novarch-out .pytest_cache
