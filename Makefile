# Two commands: `make lab` opens the course, `make test` runs everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch is installed first, so nothing pulls in a multi-GB CUDA build.
# On Linux, pip's default torch is the CUDA one: add TORCH_INDEX=https://download.pytorch.org/whl/cpu
# for the small CPU build, or a CUDA index for a GPU (see README).
TORCH      ?= torch==2.13.0
TORCH_INDEX ?=
LAB_FLAGS  ?=
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: lab test unit notebooks exercises clean help

help:
	@echo "make lab        open JupyterLab on the first lesson (creates .venv on first use)"
	@echo "make test       run the unit tests and execute every notebook"
	@echo "make notebooks  re-run notebooks/ and solutions/ in place, so stored outputs are fresh"
	@echo "make exercises  regenerate exercises/ from solutions/"

$(STAMP): pyproject.toml jupyter-config/labconfig/default_setting_overrides.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	mkdir -p $(VENV)/etc/jupyter/labconfig
	cp jupyter-config/labconfig/default_setting_overrides.json $(VENV)/etc/jupyter/labconfig/
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=. notebooks/00_start_here.ipynb $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_FLAGS)

# Unit tests, then every notebook top to bottom (nbval). Fast mode shortens training loops.
test: $(STAMP)
	SDCOURSE_FAST=1 SDCOURSE_QUIZ=text MPLBACKEND=Agg TQDM_DISABLE=1 \
		$(BIN)/python -m pytest tests notebooks solutions --nbval-lax --nbval-current-env -q --durations=10

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q

notebooks: $(STAMP)
	$(BIN)/python tools/run_notebooks.py --all

exercises: $(STAMP)
	$(BIN)/python tools/make_exercises.py

clean:
	rm -rf $(VENV) .pytest_cache
