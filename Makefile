# Every command a person or CI runs. One environment: .venv, built from requirements.lock.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PYTHON ?= python3
UV_VERSION := 0.13.9
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONHASHSEED := 0

.PHONY: help env run test bench lab ui export lock

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock setup.py settings.ini
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "requirements.lock is resolved for Python 3.11; $(PYTHON) is " + sys.version.split()[0] + " (use make PYTHON=python3.11 ...)")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --python $(VENV)/bin/python requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python --no-deps -e .
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name devchange --display-name "Python (devchange)" >/dev/null
	touch $@

env: $(VENV)/.installed  ## create .venv from the lock, install devchange and its Jupyter kernel

run: env  ## run the whole pipeline (dvc repro)
	dvc repro

test: env  ## every test: nbdev checks, library units, notebooks (nbval), pipeline end to end
	pytest

SIZES ?= 20000 100000 300000 1000000
bench: env  ## the whole pipeline at SIZES users: time, CPU, memory per stage (reports/bench/; see benchmarks/bench.py)
	python benchmarks/bench.py $(SIZES)

lab: env  ## open the notebooks in JupyterLab
	jupyter lab nbs/

UI_PORT ?= 5000
ui: env  ## MLflow UI for the embedded store (mlflow.db, mlartifacts/) on http://127.0.0.1:5000 (UI_PORT=...)
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

export: env  ## regenerate devchange/ from the notebooks, then strip the notebooks
	nbdev_export
	nbdev_clean

lock: env  ## re-resolve requirements.in into requirements.lock
	uv pip compile requirements.in -o requirements.lock --python-version 3.11
