# mechlab: two commands on a fresh machine (see README.md)
#
#   make all            set up .venv, then run every numbered notebook and render reports/NN_name.html
#   make test           run the test suite (includes `make all QUICK=1` end to end)
#
#   make all QUICK=1    the same with every notebook's `quick` parameter True, into reports/quick/
#   make data           regenerate data/*.jsonl and check them against data/manifest.json
#   make train          train the main model (resumes runs/main/), export it to checkpoints/main/, evaluate it
#   make train-NAME     the same for study NAME (grokking_mlp, grokking_mlp_seed, grokking_transformer,
#                       three_layer, three_layer_wd01, toylm_zero_layer, toylm_attn_only_1l, toylm_attn_only_2l,
#                       toylm_attn_only_2l_ctx256, toylm_attn_only_2l_lr1e2, toylm_attn_only_2l_ctx256_lr1e2,
#                       shakespeare_char_seed0/1/2; shakespeare_char_gpu wants a GPU; grokking_published_seed999/0/1,
#                       emergence (the same run as sweep main_seeds' seed 1), multitask, multimodulus, lstm,
#                       encdec):
#                       reproduces its committed checkpoint folder
#
# Every trained model is a registered study of the one CLI: `python -m mechlab NAME train|export|evaluate`
# (`python -m mechlab --help`); the recipe and export settings live in the study's definition.
#   make sweep-NAME     run registered sweep NAME (main_seeds, main_minimal, main_widths, grokking_mlp_width; WORKERS=N, RAY=ADDRESS, WHERE=...)
#   make bench          run the benchmarks
#   make explore        the interactive explorer on http://127.0.0.1:7860 (installs the `explorer` extra on first use)
#   make check-reports  open the reports in headless Chromium (offline) and check every figure drew
#   make clean-reports  delete the rendered reports
#
# A report is re-made only when its notebook, a file in src/, data/manifest.json or a file in
# checkpoints/ is newer than it; every run first checks data/*.jsonl against the manifest by hash
# (an edited file is regenerated and named). Conda users: `conda env create -f environment.yml`, activate,
# then `make all VENV=$CONDA_PREFIX`.

SHELL := /bin/bash
.DEFAULT_GOAL := all
.NOTPARALLEL:
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.mechlab-installed
EXTRAS ?=
TORCH := $(shell grep -o 'torch==[0-9.]*' pyproject.toml)

QUICK ?=
ifeq ($(QUICK),1)
REPORTS ?= reports/quick
QUICK_FLAG := --quick
else
REPORTS ?= reports
QUICK_FLAG :=
endif

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
REPORT_HTML := $(patsubst notebooks/%.ipynb,$(REPORTS)/%.html,$(NOTEBOOKS))
SRC := $(shell find src -name "*.py" | sort)
CHECKPOINTS := $(shell find checkpoints -type f ! -name '.*' 2>/dev/null | sort)

STUDIES := grokking_mlp grokking_mlp_seed grokking_transformer three_layer three_layer_wd01 \
           toylm_zero_layer toylm_attn_only_1l toylm_attn_only_2l toylm_attn_only_2l_ctx256 \
           toylm_attn_only_2l_lr1e2 toylm_attn_only_2l_ctx256_lr1e2 \
           shakespeare_char_seed0 shakespeare_char_seed1 shakespeare_char_seed2 shakespeare_char_gpu \
           grokking_published_seed999 grokking_published_seed0 grokking_published_seed1 \
           multitask multimodulus lstm encdec emergence

.PHONY: all venv .venv data data-checked train train-main $(addprefix train-,$(STUDIES)) bench test test-fast check-reports clean-reports

all: $(REPORT_HTML)

# ---- environment -------------------------------------------------------------------------------
venv .venv: $(VENV_STAMP)

# torch first, pinned (TORCH comes from pyproject.toml): an unpinned torch pulls GBs of CUDA.
$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".$(if $(EXTRAS),[$(EXTRAS)])"
	$(PY) -m ipykernel install --sys-prefix --name mechlab --display-name "Python (mechlab)"
	touch $@

# ---- data and models ---------------------------------------------------------------------------
# Checked on every make run (a few seconds of hashing): a missing, edited or damaged data file is
# regenerated, and `mechlab data` names each file it repairs. File times cannot show an edit.
data-checked: | $(VENV_STAMP)
	@$(PY) -c 'import sys; from mechlab.arithmetic.data import verify_against_manifest as v; sys.exit(bool(v("data")))' \
	  || $(PY) -m mechlab data data

data: | $(VENV_STAMP)
	$(PY) -m mechlab data data

train: train-main

# runs/NAME/ (resumed if interrupted) -> checkpoints/NAME/ (three_layer_wd01: checkpoints/three_layer/wd01/)
# The committed grokking_transformer run was stopped by hand at epoch 425 (its study note).
TRAIN_FLAGS_grokking_transformer := --stop-after-steps 425
# The committed Shakespeare GPTs were trained on one thread; the same flag trains them again.
TRAIN_FLAGS_shakespeare_char_seed0 := --threads 1
TRAIN_FLAGS_shakespeare_char_seed1 := --threads 1
TRAIN_FLAGS_shakespeare_char_seed2 := --threads 1
# So were the published-regime grokking runs (three at once on the 2-core machine).
TRAIN_FLAGS_grokking_published_seed999 := --threads 1
TRAIN_FLAGS_grokking_published_seed0 := --threads 1
TRAIN_FLAGS_grokking_published_seed1 := --threads 1
# The committed multi-task model was trained on one thread, beside two replication seeds.
TRAIN_FLAGS_multitask := --threads 1
# The multi-modulus, LSTM and encoder-decoder models likewise, two at a time.
TRAIN_FLAGS_multimodulus := --threads 1
TRAIN_FLAGS_lstm := --threads 1
TRAIN_FLAGS_encdec := --threads 1
train-main $(addprefix train-,$(STUDIES)): train-%: | $(VENV_STAMP) data-checked
	$(PY) -m mechlab $* train $(TRAIN_FLAGS_$*)
	$(PY) -m mechlab $* export
	$(PY) -m mechlab $* evaluate --save

# ---- sweeps ------------------------------------------------------------------------------------
# make sweep-NAME: every point of registered sweep NAME (python -m mechlab sweep NAME) into
# runs/sweeps/NAME/<point>/ (finished points skipped, interrupted ones resumed), results table
# checkpoints/sweeps/NAME.json. WORKERS=N: N local processes; RAY=ADDRESS: each point a Ray task on
# that cluster (installs the `ray` extra first). QUICK=1: quick points, results under runs/ only.
# WHERE="n_layers=3 n_layers=4": only the points with those grid values (python -m mechlab sweep --help).
WORKERS ?= 1
RAY ?=
RAY_STAMP := $(VENV)/.mechlab-ray-installed
$(RAY_STAMP): pyproject.toml | $(VENV_STAMP)
	$(PY) -m pip install -e ".[ray]"
	touch $@

sweep-%: | $(VENV_STAMP) data-checked $(if $(RAY),$(RAY_STAMP))
	$(PY) -m mechlab sweep $* --workers $(WORKERS) $(if $(RAY),--address $(RAY)) $(if $(WHERE),--where $(WHERE)) $(QUICK_FLAG)

# Writes figures/bench_{training,patching,shakespeare,explore}.json (+ .png/.svg): about 25 minutes on 2 CPU cores.
bench: | $(VENV_STAMP) data-checked
	$(PY) -m mechlab.bench.training
	$(PY) -m mechlab.bench.patching --checkpoint checkpoints/main/model.pt
	$(PY) -m mechlab.bench.shakespeare --train
	$(PY) -m mechlab.bench.explore
	$(PY) -m mechlab.bench.ensemble

# ---- reports -----------------------------------------------------------------------------------
# Notebooks run one at a time in name order (.NOTPARALLEL), each in its own folder as cwd.
$(REPORTS)/%.html: notebooks/%.ipynb $(SRC) data/manifest.json $(CHECKPOINTS) scripts/render_notebook.py | $(VENV_STAMP) data-checked
	@mkdir -p $(@D)
	$(PY) scripts/render_notebook.py $< $@ $(QUICK_FLAG)

check-reports: | $(VENV_STAMP)
	$(PY) scripts/check_reports.py $(wildcard $(REPORTS)/*.html)

clean-reports:
	rm -rf $(REPORTS)

# ---- tests -------------------------------------------------------------------------------------
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: | $(VENV_STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-fast: | $(VENV_STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ---- the explorer ------------------------------------------------------------------------------
# The `explorer` extra (gradio, playwright) goes into the venv on first use; then the app serves on
# 127.0.0.1 only (PORT=N to change the port), analytics off, until Ctrl-C.
EXPLORER_STAMP := $(VENV)/.mechlab-explorer-installed
PORT ?= 7860
$(EXPLORER_STAMP): pyproject.toml | $(VENV_STAMP)
	$(PY) -m pip install -e ".[explorer]"
	touch $@

.PHONY: explore
explore: $(EXPLORER_STAMP) data-checked
	GRADIO_ANALYTICS_ENABLED=False $(PY) -m mechlab.explore --port $(PORT)
