# redis-infra: `make lab` runs it, `make test` tests it. Everything else is a step of those two.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# Molecule lanes: they run side by side, the scenarios of a lane (comma-separated) one after another.
# Balanced from the scenarios' times (docs/benchmarks.md, "Test suite time"). At stop 30 two lanes took 1890 s
# (ha, redis8, default) and 1967 s (production, valkey, cluster). Three lanes were tried at stop 31 and were
# slower on the 2 cores (ha 2211 s instead of 1219, production 1301 instead of 699): two lanes, each with one
# cluster scenario. `make test-molecule LANES=production` runs one.
# At stop 35 ha grew by the upgrade by replacement (two Debian 13 hosts take the group over): default moved to lane 2.
LANES ?= ha,cluster-valkey production,valkey,cluster,redis8,default
# Fast-test workers: the tests wait on servers and playbooks much of the time, so three workers keep the two cores
# busier than two (on this machine the same 696 tests took 352 s with 2, 273 s with 3 and 255 s with 4).
FAST_WORKERS ?= 3
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help host venv collections images lab lab-destroy lint sanity test test-fast test-molecule bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

host: ## Install and start what this machine needs (engine, debootstrap, redis-server, promtool, redis_exporter)
	scripts/bootstrap-host.sh

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(BIN)/.installed ## Create the virtualenv with the pinned Python tools

collections: venv ## Install the collections in requirements.yml (bundled with ansible: nothing to download)
	$(BIN)/ansible-galaxy collection install -r requirements.yml >/dev/null

images: host ## Build the Debian 12 and 13 systemd test images (skips existing ones)
	scripts/build-images.sh

lab: host venv collections images ## Start the lab containers and converge them with the production profile
	scripts/lab.sh up

lab-destroy: venv ## Stop and remove the lab containers
	scripts/lab.sh down

lint: venv collections ## yamllint, ansible-lint (production profile), ruff, the changelog fragments
	$(BIN)/yamllint .
	$(BIN)/antsibull-changelog lint
	$(BIN)/ansible-lint
	$(BIN)/ruff check .

sanity: venv ## ansible-test sanity on the built collection (each test in its own virtualenv, from PyPI)
	scripts/sanity.sh

test-fast: venv collections ## Fast tests: templates and Python tools against real redis-server processes
	$(BIN)/pytest -q -n $(FAST_WORKERS) tests

test-molecule: venv collections images ## Every Molecule scenario (in parallel lanes): check mode, converge, verify
	MOLECULE=$(BIN)/molecule scripts/test-molecule.sh $(LANES)

test: host lint sanity test-fast test-molecule ## Lint, ansible-test sanity, fast tests, then every Molecule scenario

bench: lab ## Benchmarks (see docs/benchmarks.md)
	scripts/bench.sh

clean: lab-destroy ## Remove the lab and the virtualenv
	rm -rf $(VENV) .pytest_cache .ruff_cache
