# Datacreek: `make demo` runs the main job, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell pyenv which python 2>/dev/null || command -v python3.12)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NCA_STAMP := .venv-nca/.installed
FLINK_STAMP := .venv-flink/.installed
export DATACREEK_STATE_DIR ?= $(CURDIR)/.datacreek
export DAGSTER_HOME ?= $(DATACREEK_STATE_DIR)/dagster_home
# Two shared cores: keep native thread pools from oversubscribing them.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

# llama.cpp is built for one instruction set, named here, so every machine (AVX2, AVX-512, AMX)
# runs the same kernels and a GGUF judged on one is judged alike on the next; the build needs
# an x86-64 CPU with AVX2 and FMA (2013 on). scripts/test-cpu-variants.sh also tries AVX-512.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF

.PHONY: help venv prereqs demo test test-cpu-variants bench dev services-up services-down services-status clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

prereqs: ## system packages the services need (Java 17, Maven), installed when missing
	@bash scripts/install-prereqs.sh

$(STAMP): pyproject.toml requirements.lock requirements-nodeps.txt
	@test -n "$(PYTHON)" || { echo "Python 3.12 is required (pyenv install 3.12)"; exit 3; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# llama-cpp-python builds from source once (~4 min on 2 cores); pip's wheel cache keeps the result.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# network-config-analyzer pins its own dependency versions: it gets its own environment.
$(NCA_STAMP): requirements-nca.lock
	$(PYTHON) -m venv .venv-nca
	.venv-nca/bin/pip install -q -r requirements-nca.lock
	touch $@

# PyFlink pins its own Beam, protobuf and numpy: the hot-graph stream job gets its own environment.
$(FLINK_STAMP): requirements-flink.lock
	$(PYTHON) -m venv .venv-flink
	.venv-flink/bin/pip install -q --upgrade pip
	.venv-flink/bin/pip install -q -r requirements-flink.lock
	touch $@

venv: $(STAMP) $(NCA_STAMP) $(FLINK_STAMP) ## create .venv (and .venv-nca, .venv-flink) and install the pinned dependencies

demo: prereqs venv ## set up, start services, build every asset for the demo tenant
	$(BIN)/datacreek demo

# every failure's traceback also goes to a file: a Ray worker shutting down can close the
# session's stdout before pytest prints its summary
# two workers (tests/xdist_groups.py groups the tests of the shared services onto one of them);
# PYTEST_WORKERS=0 runs everything in this one process (for --pdb, or -s to see a test's output)
PYTEST_WORKERS ?= 2
test: prereqs venv ## set up and run the whole test suite against real services
	$(BIN)/python -m pytest -p no:cacheprovider -ra -n $(PYTEST_WORKERS) --junitxml=test-artifacts/junit.xml $(PYTEST_ARGS)

test-cpu-variants: prereqs venv ## the numeric tests as other CPUs run them (torch's kernel sets, llama.cpp with AVX-512)
	bash scripts/test-cpu-variants.sh

bench: prereqs venv ## run every benchmark side by side with its baseline
	$(BIN)/python -m bench $(BENCH_ARGS)

dev: venv ## Dagster UI on http://127.0.0.1:3000
	$(BIN)/datacreek services up
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

services-up: venv
	$(BIN)/datacreek services up
services-down: venv
	$(BIN)/datacreek services down
services-status: venv
	$(BIN)/datacreek services status

clean: services-down ## stop services and delete local state
	rm -rf $(DATACREEK_STATE_DIR)
