# AutoLabel operator: the commands a newcomer needs (see README.md).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEVENV := PYTHONPATH=tools $(PY) -m devenv
PYTEST_ARGS ?=

.PHONY: help venv bins crds lint chart-lint test test-unit test-integration cluster-up cluster-down s3-up s3-down \
	dev-up dev-down kueue-up kueue-down demo bench bench-detection bench-operator bench-quality clean kind-up kind-down kind-demo

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed ## Create .venv with the project and its dev tools (torch, kopf, ...)

bins: ## Build the control plane, etcd, MinIO and Helm from source (cached in .cache/bin)
	bash tools/build-bins.sh
	bash tools/install-helm.sh

crds: venv ## Regenerate crds/ from the API models (autolabel/api.py)
	$(PY) -m autolabel.crd > crds/autolabeljobs.autolabel.dev.yaml
	cp crds/autolabeljobs.autolabel.dev.yaml charts/autolabel-operator/files/

lint: venv ## ruff, mypy and the import layers (import-linter contracts in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy autolabel cli/autolabel_cli operator/autolabel_operator job_image/autolabel_worker tools/devenv
	$(VENV)/bin/mypy tests benchmarks

test: venv bins lint ## Install what is needed and run the whole suite (unit + integration + end to end)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

chart-lint: bins ## helm lint of the chart
	.cache/bin/helm lint --strict charts/autolabel-operator

test-unit: venv ## Unit tests only (no control plane, no S3 server)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv bins ## Integration and end-to-end tests (start a local control plane and S3 server)
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

cluster-up: venv bins ## Start the local control plane; kubeconfig at .cluster/kubeconfig
	$(DEVENV).cluster up --state-dir .cluster

cluster-down: ## Stop the local control plane and remove its state
	$(DEVENV).cluster down --state-dir .cluster

s3-up: venv bins ## Start only the S3 server (MinIO on loopback)
	$(DEVENV).s3 up --state-dir .s3

s3-down: ## Stop the S3 server
	$(DEVENV).s3 down --state-dir .s3

dev-up: venv bins ## Control plane + S3 server + operator + local node runner; writes .dev/env
	$(DEVENV).dev up

dev-down: ## Stop exactly what dev-up started
	$(DEVENV).dev down

kueue-up: venv bins ## A real Kueue (built from sigs.k8s.io/kueue) for the cluster of cluster-up/dev-up
	$(DEVENV).kueue up --state-dir .kueue --cluster-dir .cluster

kueue-down: ## Stop Kueue and remove its webhooks
	$(DEVENV).kueue down --state-dir .kueue --cluster-dir .cluster

demo: venv bins ## The whole loop on the local control plane with the bundled sample dataset
	$(DEVENV).demo

bench: venv ## Worker benchmarks: 10 seeds, throughput, 100k scale (30-45 min on 2 cores; docs/benchmarks.md)
	AUTOLABEL_TORCH_THREADS=1 nice $(PY) benchmarks/bench_worker.py --part all --seeds 10 --scale-sizes 10000,100000

bench-detection: venv ## Detection benchmarks: 10 seeds x Fast/Precise, pre-labeling on 1/2/3/5 shards, GPU if any (about 3.5 h on 2 cores)
	AUTOLABEL_TORCH_THREADS=1 nice $(PY) benchmarks/bench_detection.py --part quality --seeds 0,1,2,3,4,5,6,7,8,9 \
		--algorithms Fast,Precise --budget 600
	AUTOLABEL_TORCH_THREADS=1 nice $(PY) benchmarks/bench_detection.py --part scaleout --shards 1,2,3,5 --pool 600
	$(PY) benchmarks/bench_detection.py --part gpu

bench-quality: venv ## Quality beyond the tuning set: report and tuning groups, oracle coverage, margin costs, budget trade-off (docs/benchmarks.md; about 2.5 h on 2 cores)
	AUTOLABEL_TORCH_THREADS=1 $(PY) benchmarks/bench_quality.py --datasets textures32,glyphs32,digits-inv64 \
		--seeds 0,1,2,3,4 --algorithms Fast --pool 300 --budget 300 --jobs 2 --json .bench/quality-report-fast.json
	AUTOLABEL_TORCH_THREADS=1 $(PY) benchmarks/bench_quality.py --datasets textures32,glyphs32,digits-inv64 \
		--seeds 0,1,2 --algorithms Precise --pool 300 --budget 600 --jobs 2 --json .bench/quality-report-precise.json
	AUTOLABEL_TORCH_THREADS=1 $(PY) benchmarks/bench_quality.py --datasets digits-inv32 --seeds 0,1,2,3 \
		--algorithms Fast --pool 300 --budget 300 --jobs 2 --json .bench/quality-tuning-inv32.json
	AUTOLABEL_TORCH_THREADS=1 $(PY) benchmarks/bench_quality.py --datasets digits8 --seeds 0,1,2,3,4,5,6,7,8,9 \
		--budget 600 --jobs 2 --json .bench/quality-tuning-digits8.json
	AUTOLABEL_TORCH_THREADS=1 $(PY) benchmarks/bench_quality.py --datasets textures32,glyphs32,digits-inv64 \
		--seeds 15,16,17 --algorithms Fast --pool 300 --budget 60,180,300 --jobs 2 --json .bench/quality-budgets.json

bench-operator: venv ## Operator benchmarks: precondition check on 10k-1M lines, a queue of jobs on one dataset
	$(PY) benchmarks/bench_operator.py

kind-up: ## A kind cluster for people with Docker (kind-config.yaml)
	kind create cluster --config kind-config.yaml

kind-down:
	kind delete cluster --name autolabel

kind-demo: ## make demo on kind: builds and loads the images, chart + MinIO, runs examples/digits-al.yaml
	bash tools/kind-demo.sh

clean: cluster-down s3-down ## Stop local services and remove caches (keeps .cache/bin)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
