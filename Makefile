# kilib: `make help` lists the targets. Every target sets up the environment first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
ONLY ?=
ZOO ?= tiny-zoo.tar.gz
STAMP := $(VENV)/.kilib-env
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.DEFAULT_GOAL := help
.PHONY: help env reproduce report test test-fast lint notebooks zoo zoo-export zoo-import bench bench-stages bench-threads budget lab lock clean-cache

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=auto|paper|standin|tiny|smoke (default auto)  ONLY=00,01 (default all; standin: 01-04)  ZOO=tiny-zoo.tar.gz"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[notebooks,test]'
	$(PY) -m ipykernel install --sys-prefix --name kilib --display-name "Python (kilib)" >/dev/null
	@touch $(STAMP)

env: $(STAMP) ## create or update the project environment (.venv, pinned by constraints.txt)

reproduce: $(STAMP) ## run the notebook series with papermill (PROFILE=auto picks paper on a GPU, else tiny) and write its REPORT.md
	$(PY) -m kilib.cli reproduce --profile '$(PROFILE)' $(if $(ONLY),--only '$(ONLY)')

report: $(STAMP) ## write results/<profile>/REPORT.md from the run.json files on disk, no notebook run
	$(PY) -m kilib.cli report --profile '$(PROFILE)'

test: $(STAMP) ## run the test suite offline (math checks + every notebook at smoke size)
	$(OFFLINE) $(PY) -m pytest -q

test-fast: $(STAMP) ## the mathematics and mechanics without the notebook runs (a few minutes)
	$(OFFLINE) $(PY) -m pytest -q -m "not notebook"

lint: $(STAMP) ## ruff: lint and format check of kilib, tests, tools and the notebook sources
	$(VENV)/bin/ruff check kilib tests tools notebooks
	$(VENV)/bin/ruff format --check kilib tests tools notebooks

notebooks: $(STAMP) ## write notebooks/*.ipynb from their jupytext sources (notebooks/*.py)
	$(PY) -m kilib.cli notebooks

zoo: $(STAMP) ## build the tiny zoo (notebook 00 builds it too) and list its cache folders
	$(OFFLINE) $(PY) -m kilib.cli zoo build

zoo-export: zoo ## write the built tiny zoo to one file (ZOO=tiny-zoo.tar.gz) for other machines, e.g. a reading group's laptops
	$(OFFLINE) $(PY) -m kilib.cli zoo export '$(ZOO)'

zoo-import: $(STAMP) ## put a file from make zoo-export (ZOO=path, made at the same kilib commit) into this cache
	$(OFFLINE) $(PY) -m kilib.cli zoo import '$(ZOO)'

bench: $(STAMP) ## measure kilib's QLoRA SFT step against a bare transformers+peft loop (results/bench/)
	$(OFFLINE) $(PY) -m kilib.bench.sft_step

bench-stages: $(STAMP) ## time and peak memory of notebook 01's paper-profile stages on a local 7B-shaped model (results/bench/)
	$(OFFLINE) $(PY) -m kilib.bench.stages

bench-threads: $(STAMP) ## on a CPU: one run on every core against one run per core side by side (results/bench/)
	$(OFFLINE) $(PY) -m kilib.bench.threads

budget: $(STAMP) ## each paper-profile stage's GPU memory and hours at real shapes (estimated; measured too on a GPU): results/budget/
	$(OFFLINE) $(PY) -m kilib.budget.cli --readme

lab: $(STAMP) ## open JupyterLab on notebooks/ with the project's kernel
	$(VENV)/bin/jupyter lab notebooks/

lock: $(STAMP) ## rewrite constraints.txt from the current environment
	@(echo "# Exact versions for every package of the kilib environment (pip -c, and environment.yml)."; \
	  echo "# Regenerate with: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//' | grep -v '^kilib') > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

clean-cache: ## delete cached worlds, zoos and training runs (.cache/)
	rm -rf .cache
