# The README's commands. Everything installs itself: the venv and packages here, the control-plane binaries into
# ~/.cache/sdtask on first use (needs Go 1.26 once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: binaries node-binaries host-packages test lint typecheck crds crds-check unit integration dev demo bench image \
	test-containers kind clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# ruff (lint and format), then the import contracts of pyproject.toml's [tool.importlinter] (the layers of README "How it is built").
lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# The pydantic models are the single source of the CRDs; the chart carries byte-identical copies.
crds: $(STAMP)
	$(BIN)/python -m sdtask.api.crdgen crds
	rm -f charts/sdtask-operator/crds/*.yaml && cp crds/*.yaml charts/sdtask-operator/crds/

crds-check: $(STAMP)
	$(BIN)/python -m sdtask.api.crdgen --check crds
	diff -r crds charts/sdtask-operator/crds

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: binaries
	$(BIN)/pytest tests/integration tests/e2e -q

# The control-plane and helm binaries, built once from the Go module proxy (a few minutes cold), before any test
# runs, so no test's time limit includes a build.
binaries: $(STAMP)
	$(BIN)/python -m sdtask.devcluster.binaries
	$(BIN)/python -m sdtask.devcluster.helm

# The test command: lint, types, CRD drift, then every test (unit, integration and end-to-end on the local stack).
test: lint typecheck crds-check binaries
	$(BIN)/pytest -q -p no:cacheprovider --ignore=tests/containers
ifeq ($(SDTASK_SKIP_CONTAINERS),1)
	@echo "make test: SDTASK_SKIP_CONTAINERS=1: the real-container suite (make test-containers) was NOT run" >&2
else
	$(MAKE) test-containers
endif

dev: binaries
	$(BIN)/python -m sdtask.devcluster.dev --state-dir .dev

demo: binaries
	$(BIN)/python -m sdtask.devcluster.demo --out demo-output

bench: binaries
	$(BIN)/python -m bench.run

# The image: starts the Docker engine if needed; when $(PYTHON_IMAGE) is not in the engine, builds an equivalent base
# from Debian's archive once (see operator/sdtask/devcluster/images.py). Standard library only: no venv needed.
IMAGE ?= sdtask-operator:0.1.0
PYTHON_IMAGE ?= python:3.11-slim
image: host-packages
	PYTHONPATH=operator $(PYTHON) -m sdtask.devcluster.images --tag $(IMAGE) --python-image $(PYTHON_IMAGE) \
		--version 0.1.0 --revision $$(git rev-parse HEAD 2>/dev/null || echo unknown)

# Debian's docker.io, containerd, runc, CNI plugins, debootstrap and iptables (needs root; once per machine).
host-packages:
	scripts/host-packages.sh

node-binaries: binaries
	$(BIN)/python -m sdtask.devcluster.binaries --node

# The real-container suite: the chart installed by helm with the built image, runtime pods on a real kubelet node.
# Needs root and the host packages above. SDTASK_SKIP_CONTAINERS=1 skips it (say so: it is the only suite that
# runs our manifests in real containers).
test-containers: image node-binaries
	$(BIN)/pytest tests/containers -q -p no:cacheprovider

# A kind cluster with fake GPU pools, the image, the chart, the example runtime and the demo task (needs Docker, kind
# and internet access); see operator/sdtask/devcluster/kind.py. Then SDTASK_KUBECONFIG=.kind/kubeconfig make test.
kind: $(STAMP)
	$(BIN)/python -m sdtask.devcluster.kind

clean:
	rm -rf $(VENV) .dev demo-output .kind kind-output .mypy_cache .ruff_cache .pytest_cache
