# Every command a person or CI runs. One environment: .venv, built from requirements.lock.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PYTHON ?= python3
UV_VERSION := 0.13.9
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONHASHSEED := 0

.PHONY: help env run test browser bench lab ui export examples readme docs guides lock promote retrain sweep emulate report image image-run test-docker repro-tiny pr-report test-quick

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# --compile-bytecode: every import then reads .pyc files written once here (~25 s on 2 cores). Without
# them, where PYTHONDONTWRITEBYTECODE is set (CI, containers) every stage's two processes compiled
# MLflow, pandas, SQLAlchemy, ... from source again: about 6 s of each stage. An older .venv gets them
# with `rm .venv/.installed && make env`.
$(VENV)/.installed: requirements.lock setup.py settings.ini
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "requirements.lock is resolved for Python 3.11; $(PYTHON) is " + sys.version.split()[0] + " (use make PYTHON=python3.11 ...)")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --compile-bytecode --python $(VENV)/bin/python requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python --no-deps -e .
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name devchange --display-name "Python (devchange)" >/dev/null
	touch $@

env: $(VENV)/.installed  ## create .venv from the lock, install devchange and its Jupyter kernel

run: env  ## run the whole pipeline (dvc repro)
	dvc repro

test: env airflow-env browser  ## every test: nbdev checks, library units, notebooks (nbval), pipeline end to end, DAGs
	pytest

# The modules that run a production loop or many pipelines: the real Airflow scheduler over four
# months, the loop against an MLflow server, the DVC sweep and the benchmark harness. make test (and
# so CI) runs them; test-quick, the run to make while you work, leaves them out.
LOOP_TESTS := tests/test_airflow.py tests/test_tracking_pipeline.py tests/test_experiments.py tests/test_bench.py

test-quick: env airflow-env browser  ## every test but LOOP_TESTS (Airflow's scheduler, the MLflow loop, the sweep, the bench)
	pytest $(addprefix --ignore=,$(LOOP_TESTS))

browser:  ## headless Chromium for the report's screenshot test: Debian's chromium, installed if no browser is (tools/browser.sh)
	bash tools/browser.sh

promote: env  ## move the registry's champion to the challenger if it wins on the newest month both scored blind (devchange promote)
	devchange promote

retrain: env  ## train a challenger on the window ending at the newest labelled month, as DVC experiment retrain-YYYY-MM
	devchange retrain

# make sweep's grid: one queued DVC experiment per combination; override with make sweep SWEEP="--set key=a,b ..."
SWEEP ?= --set models.lightgbm.params.num_leaves=15,63 --set models.lightgbm.params.min_child_samples=50,200
SWEEP_JOBS ?= 2
sweep: env  ## a grid of queued DVC experiments (SWEEP), SWEEP_JOBS at a time, compared from the MLflow store (devchange sweep)
	devchange sweep $(SWEEP) -j $(SWEEP_JOBS)

emulate: run  ## production month by month over data/stream: score, evaluate, retrain, shadow, promote; prints the timeline
	devchange emulate

report: env  ## the production report, every month at a glance: reports/production.html (+ .ipynb), logged to MLflow (devchange report)
	devchange report

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

examples: env  ## run the library notebooks and keep their outputs, the examples a reader sees without running them
	jupyter nbconvert --to notebook --execute --inplace nbs/[0-9]*.ipynb
	nbdev_clean

DOCS_DIR ?= _docs
readme: env  ## write the README's opening from nbs/index.ipynb (its outputs as saved: run the notebook first)
	python tools/readme.py

docs: env  ## the docs site in _docs/ (DOCS_DIR=...): home, guides, library chapters with their API (tools/docs.py)
	python tools/docs.py --out $(DOCS_DIR)

guides: env  ## run the guides (nbs/guides/) on tiny data and save their outputs, which the docs show (tools/guides.py)
	python tools/guides.py

lock: env  ## re-resolve requirements.in into requirements.lock
	uv pip compile requirements.in -o requirements.lock --python-version 3.11

# Airflow: its own environment (.venv-airflow, from airflow/requirements.lock; its web and database
# pins never meet the project's lock). Its tasks run the project's commands with $(VENV).
.PHONY: airflow-env airflow airflow-cli airflow-lock
AIRFLOW_VENV := .venv-airflow
AIRFLOW_PORT ?= 8080
# tasks at once: 1 suits the SQLite stores (Airflow's and MLflow's) of one small machine
AIRFLOW_PARALLELISM ?= 1
AIRFLOW_ENV = PATH=$(abspath $(AIRFLOW_VENV))/bin:$$PATH \
	AIRFLOW_HOME=$(CURDIR)/airflow/home \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/airflow/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__PARALLELISM=$(AIRFLOW_PARALLELISM) \
	AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__API__BASE_URL=http://127.0.0.1:$(AIRFLOW_PORT) \
	DEVCHANGE_VENV=$(abspath $(VENV))

$(AIRFLOW_VENV)/.installed: airflow/requirements.lock $(VENV)/.installed
	test -x $(AIRFLOW_VENV)/bin/python || $(VENV)/bin/python -m venv --without-pip $(AIRFLOW_VENV)
	$(VENV)/bin/uv pip sync --quiet --python $(AIRFLOW_VENV)/bin/python airflow/requirements.lock
	touch $@

airflow-env: $(AIRFLOW_VENV)/.installed  ## create .venv-airflow from airflow/requirements.lock

airflow: env airflow-env  ## Airflow with this project's DAGs: UI and API on http://127.0.0.1:8080 (AIRFLOW_PORT=...)
	@echo "Airflow home: airflow/home (metadata DB, logs).  DAGs: airflow/dags (paused until you unpause them)."
	@echo "UI: http://127.0.0.1:$(AIRFLOW_PORT)  user: admin  password: in airflow/home/simple_auth_manager_passwords.json.generated (written at the first start)"
	$(AIRFLOW_ENV) airflow/start.sh

airflow-cli: env airflow-env  ## run an airflow command on this project's Airflow, e.g. make airflow-cli ARGS="dags list"
	$(AIRFLOW_ENV) $(AIRFLOW_VENV)/bin/airflow $(ARGS)

airflow-lock: env  ## re-resolve airflow/requirements.in into airflow/requirements.lock
	uv pip compile airflow/requirements.in -o airflow/requirements.lock --python-version 3.11

# Delivery: the Docker image, the compose stack's test, and the CI/CD workflow's steps
# (.github/workflows/ci.yml runs only these targets; .ci/run and the tests run each of them).
IMAGE ?= devchange:latest
BASE_IMAGE ?= python:3.11-slim
DEVCHANGE_UID ?= 1000
DOCKER_RUN_FLAGS ?= --rm
BASE ?= origin/main
PR_REPORT ?= pr-report.md
# tests/helpers.py's TINY settings (tests/test_ci.py keeps the two equal)
TINY_PARAMS := generate.n_users=1500 models.lightgbm.params.n_estimators=40 models.lightgbm.params.min_child_samples=20

image:  ## build the Docker image IMAGE from BASE_IMAGE (a TLS proxy's CA: put it in docker/certs/*.crt)
	docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg UID=$(DEVCHANGE_UID) -t $(IMAGE) .

image-run:  ## run the image's default command, dvc repro, tracking to MLFLOW_TRACKING_URI
	docker run $(DOCKER_RUN_FLAGS) -e MLFLOW_TRACKING_URI -e MLFLOW_TRACKING_USERNAME -e MLFLOW_TRACKING_PASSWORD \
		-e MLFLOW_EXPERIMENT_NAME $(IMAGE)

test-docker: env  ## build and run the image, alone and as the compose stack (starts an engine if none runs)
	docker/test.sh

repro-tiny: env  ## the pipeline on tiny data in a temporary folder (dvc exp run --temp); the workspace stays
	dvc exp run --temp $(addprefix -S ,$(TINY_PARAMS))

pr-report: env  ## PR_REPORT (markdown): params and metrics of the workspace against BASE (a git revision)
	.ci/pr-report $(BASE) > $(PR_REPORT)
	@echo "wrote $(PR_REPORT)"
