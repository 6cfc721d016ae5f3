# linflow — `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Stages call `linflow` and `dvc` from the project's virtual environment.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup pins fashion-data run table-example test test-fast test-ci verify portability lint format ui ui-links server serve bench bench-tables bench-models bench-stream plots-vendor clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-13s %s\n", $$1, $$2}'

# The venv is (re)built only when the dependency pins change: a second
# `make run` reinstalls nothing.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing linflow and its $$(grep -c '==' constraints.txt) pinned packages into $(VENV) (2-3 min the first time) ..."
	@# pip's own lines (one per package) and a heartbeat every 10 s while it unpacks
	@( while sleep 10; do echo "  ... still installing"; done ) & beat=$$!; \
	  $(PY) -m pip install --disable-pip-version-check --progress-bar off \
	    -c constraints.txt -e '.[dev]'; status=$$?; kill $$beat; exit $$status
	touch $@

setup: $(VENV)/.installed ## create .venv and install linflow with pinned dependencies

# constraints.txt pins every package, transitive ones included. This re-resolves
# them within pyproject.toml's ranges (newest allowed) in a scratch venv.
pins: ## re-resolve all dependencies and rewrite constraints.txt (then make test)
	rm -rf .venv-pins && python3 -m venv .venv-pins
	.venv-pins/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	{ echo "# Every package, transitive ones included, at the exact version the project is tested"; \
	  echo "# with (pip install -c constraints.txt). Regenerate with 'make pins' (docs/reproducibility.md)."; \
	  .venv-pins/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' | grep -v '^linflow'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt && rm -rf .venv-pins

# Fashion-MNIST comes from a torchvision-layout cache, the Debian package
# dataset-fashion-mnist, or the official mirror (prepare@fashion_mnist tries them
# in that order). Install the package when we can; otherwise prepare explains.
FASHION_DEB := /usr/share/datasets/fashion-mnist
fashion-data: ## install the Debian package dataset-fashion-mnist when possible
	@if [ -d "$(FASHION_DEB)" ] || [ -d data/cache/FashionMNIST/raw ] || [ -n "$$LINFLOW_DATA_ROOT" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the Debian package dataset-fashion-mnist ..."; \
	  { apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; } >/dev/null 2>&1 \
	    || echo "could not install dataset-fashion-mnist; prepare@fashion_mnist will try the download mirror"; \
	else \
	  echo "note: Fashion-MNIST not found; 'sudo apt-get install dataset-fashion-mnist', or let prepare@fashion_mnist download it"; \
	fi

run: setup fashion-data ## set up .venv, then run the default pipeline (dvc repro)
	dvc repro

# docs/lessons.md#how-to-train-on-your-own-table: an example table (scikit-learn's wine
# with a category, empty cells and dates, saved with ';' and decimal commas), added as
# dataset `wine` by `linflow add-dataset`, then the pipeline. Remove the `wine:` entry
# from params.yaml to undo (docs/pipeline.md#removing-a-dataset).
table-example: setup ## your own table in one command: write an example CSV, add-dataset wine, dvc repro
	$(PY) -m linflow.datasets.examples wine data/tables/wine.csv
	linflow add-dataset wine data/tables/wine.csv --target cultivar
	dvc repro

test: setup fashion-data ## the test suite: unit + end-to-end pipeline (~10 min); not the ci-marked ones
	$(PY) -m pytest -m "not ci"

test-fast: setup ## unit tests only (skip the slow whole-pipeline tests and the ci-marked ones)
	$(PY) -m pytest -m "not slow and not ci"

test-ci: setup fashion-data ## what CI adds: real mlflow servers, every command of docs/lessons.md, the browser test (~9 min)
	$(PY) -m pytest -m ci

verify: setup fashion-data ## re-run the whole pipeline; fail unless it reproduces the committed dvc.lock and metrics
	linflow verify

portability: setup fashion-data ## re-run verify as other CPUs would (emulated kernel variants; VARIANTS=all for one); print the spreads
	linflow portability $(VARIANTS)

lint: setup ## ruff format --check + ruff check
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks

format: setup ## apply ruff formatting and autofixes
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

UI_PORT ?= 5000
UI_DB ?= $(CURDIR)/mlflow.db
ui: setup ## MLflow UI over the project's store on http://127.0.0.1:5000 (UI_PORT=5001 for another port)
	@$(PY) -c "import socket, sys; s = socket.socket(); \
	  s.bind(('127.0.0.1', $(UI_PORT)))" 2>/dev/null || { echo "make ui: port $(UI_PORT) on 127.0.0.1 is in use; stop what holds it or pick another: make ui UI_PORT=5001" >&2; exit 1; }
	@$(MAKE) -s ui-links
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(UI_DB)" \
		--default-artifact-root "$(CURDIR)/mlartifacts" --host 127.0.0.1 --port $(UI_PORT)

# A team's tracking server (docs/mlflow.md#a-team-server): runs and params in
# PostgreSQL (SERVER_DB), artifact files in SERVER_ARTIFACTS, served through the
# server so clients need no access to either. Listen on all interfaces with
# SERVER_HOST=0.0.0.0 and name the address clients use in SERVER_ALLOWED_HOSTS.
# The password goes in PGPASSWORD or ~/.pgpass, not in the URI (ps would show it).
SERVER_DB ?= postgresql://mlflow@127.0.0.1:5432/mlflow
SERVER_ARTIFACTS ?= $(CURDIR)/mlserver-artifacts
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
SERVER_WORKERS ?= 2
SERVER_ALLOWED_HOSTS ?=
server: setup ## team MLflow server: PostgreSQL backend (SERVER_DB), artifact store (SERVER_ARTIFACTS)
	@$(PY) -c "import psycopg" 2>/dev/null || { echo "make server: the PostgreSQL driver psycopg is not installed in $(VENV): $(PY) -m pip install -c constraints.txt -e '.[server]'" >&2; exit 1; }
	@err=$$($(PY) -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=5).close()" "$(SERVER_DB)" 2>&1) || { \
	  echo "make server: cannot connect to PostgreSQL at $$(echo '$(SERVER_DB)' | sed -E 's#//[^@/]*@#//***@#'): $$(echo "$$err" | grep -m1 -E '^[a-zA-Z_.]+(Error|Exception): ' | sed -E 's/^[a-zA-Z_.]+(Error|Exception): //') (docs/mlflow.md#a-team-server)" >&2; exit 1; }
	@echo "MLflow team server: http://$(SERVER_HOST):$(SERVER_PORT) (runs in PostgreSQL, artifacts in $(SERVER_ARTIFACTS)); clients: MLFLOW_TRACKING_URI=http://<this host>:$(SERVER_PORT)"
	@$(VENV)/bin/mlflow server --backend-store-uri "$(SERVER_DB)" \
		--artifacts-destination "$(SERVER_ARTIFACTS)" --serve-artifacts \
		--host $(SERVER_HOST) --port $(SERVER_PORT) --workers $(SERVER_WORKERS) \
		$(if $(SERVER_ALLOWED_HOSTS),--allowed-hosts "$(SERVER_ALLOWED_HOSTS)")

# docs/mlflow.md#serving-make-serve: the registered champion of one dataset as a REST
# endpoint (/invocations), in this environment (--env-manager local).
DATASET ?= digits
SERVE_PORT ?= 5001
serve: setup ## serve models:/linflow-$(DATASET)@champion on http://127.0.0.1:5001 (DATASET=..., SERVE_PORT=...)
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(UI_DB)}" $(VENV)/bin/mlflow models serve \
		-m "models:/linflow-$(DATASET)@champion" --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

# The addresses make ui prints. MLflow 3 opens an experiment in its GenAI view (traces,
# no runs) unless the address says workflowType=machine_learning, and its experiment
# list drops that on a click: so one runs-view link per experiment, read from the store.
ui-links:
	@$(PY) -c "from linflow.core.tracking import close_dead_runs; close_dead_runs()"
	@echo "MLflow UI: http://127.0.0.1:$(UI_PORT)/#/experiments?workflowType=machine_learning (Ctrl-C stops it); the training runs of"
	@$(PY) -c "import sqlite3, sys; \
	  q = \"select experiment_id, name from experiments where lifecycle_stage = 'active' and name like 'linflow-%' order by name\"; \
	  rows = sqlite3.connect('file:$(UI_DB)?mode=ro', uri=True).execute(q).fetchall(); \
	  [print(f'  {n}: http://127.0.0.1:$(UI_PORT)/#/experiments/{i}/runs?workflowType=machine_learning') for i, n in rows]" \
	  2>/dev/null || echo "  (no experiment yet: dvc repro creates one per dataset)"

bench: setup fashion-data ## trainer benchmark (Fashion-MNIST): ratios to benchmarks/results/trainer.json
	$(PY) benchmarks/bench_trainer.py --reps 3

bench-tables: setup ## table benchmark (1M-row CSV, Parquet; ~3 min): prepare + split vs pandas, pyarrow, to benchmarks/results/tables.json
	$(PY) benchmarks/bench_tables.py --reps 5

bench-models: setup fashion-data ## MLflow Model costs (after make run; ~4 min): log+register, share of a cold repro, predict vs pandas, served latency, to benchmarks/results/models.json
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) benchmarks/bench_models.py --reps 5

bench-stream: setup ## streamed tables (~12 min, ~3 GB in data/cache/bench): epoch and reference vs in memory and pyarrow; dvc repro of 20M rows in a 2 GiB cgroup; to benchmarks/results/stream.json
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) benchmarks/bench_stream.py --reps 3

plots-vendor: setup ## re-fetch the Vega libraries `dvc plots show` inlines (.dvc/plots/; needs npm)
	$(PY) .dvc/plots/vendor.py

clean: ## remove pipeline outputs (not .venv, not mlflow.db)
	rm -rf data/raw data/prepared models
