# Quiver: `make help` lists the targets. CI (.ci/run) calls the same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	# The SDK comes in as a dependency (a copy); make it editable too.
	$(BIN)/pip install --quiet --no-deps -e clients/python
	touch $(STAMP)

.PHONY: setup
setup: $(STAMP) ## Create .venv and install Quiver with its development tools and the spark extra

.PHONY: protos
protos: $(STAMP) ## Regenerate Python code and .pyi stubs from protos/
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python scripts/gen_protos.py

.PHONY: protos-check
protos-check: $(STAMP) ## Fail if generated protobuf code drifts from protos/
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python scripts/gen_protos.py --check

.PHONY: lint
lint: $(STAMP) ## Ruff over hand-written code (generated code is excluded)
	$(BIN)/ruff check clients/python/src server/src flight/src scripts benchmarks tests

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict over hand-written code
	$(BIN)/mypy clients/python/src/quiver server/src/quiver_server flight/src/quiver_flight

.PHONY: test-tools
test-tools: ## Install the Debian tools tests drive: chromium (report) and promtool (alert rules)
	bash scripts/install_test_tools.sh

.PHONY: test
test: $(STAMP) protos-check test-tools ## Run the whole test suite (what CI runs)
	$(BIN)/pytest -q

.PHONY: demo
demo: $(STAMP) ## The main job: demo repo -> apply -> materialize -> serve -> lookups
	$(BIN)/python scripts/demo.py

.PHONY: bench-online
bench-online: $(STAMP) ## Online serving latency/throughput vs a bare gRPC echo floor, auth off/on, tracing off/on
	$(BIN)/python benchmarks/bench_online.py $(ARGS)
	$(BIN)/python benchmarks/tracing_overhead.py $(TRACING_ARGS)

.PHONY: bench-transforms
bench-transforms: $(STAMP) ## The bench-online transformations arm alone: 1x20 lookups plain vs scaled + on-demand, alternating
	$(BIN)/python benchmarks/bench_online.py --only transforms $(ARGS)

.PHONY: bench-training
bench-training: $(STAMP) ## Training sets through Flight vs a bare Flight stream floor
	$(BIN)/python benchmarks/bench_training.py $(ARGS)

.PHONY: bench-materialize
bench-materialize: $(STAMP) ## Materialization rows/s into the online store vs raw SQLite inserts
	$(BIN)/python benchmarks/bench_materialize.py $(ARGS)

.PHONY: bench-spark
bench-spark: $(STAMP) ## Spark engine vs local: training sets (1M/4M spines, 10M history), materialization (long)
	$(BIN)/python benchmarks/bench_spark.py $(ARGS)

.PHONY: bench-monitor
bench-monitor: $(STAMP) ## Monitoring costs: lookups with profiling off/on, materialize with/without profiles, quiver monitor over 10M rows
	$(BIN)/python benchmarks/bench_monitor.py $(ARGS)

.PHONY: bench-admission
bench-admission: $(STAMP) ## 1-entity lookup latency while heavy callers send 1,000-entity lookups, with and without the heavy-request limit
	$(BIN)/python benchmarks/bench_admission.py $(ARGS)

.PHONY: bench-compaction
bench-compaction: $(STAMP) ## A 100-row training set over 2,800 pushed files, before and after quiver compact, vs one file
	$(BIN)/python benchmarks/bench_compaction.py $(ARGS)

.PHONY: clean
clean: ## Remove the virtualenv, caches and demo output
	rm -rf $(VENV) demo-repo .bench .pytest_cache .mypy_cache .ruff_cache test-artifacts
