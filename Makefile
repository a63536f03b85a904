# SPDX-License-Identifier: Apache-2.0
VENV := .venv
PY := $(VENV)/bin/python
INVENTORY ?= inventory/virtual-rig

.PHONY: setup rig test test-fast bench pki-status
.DEFAULT_GOAL := help

help:
	@echo "make setup   install Debian packages and the .venv (idempotent)"
	@echo "make rig     run the main job on the virtual rig (INVENTORY=... for another)"
	@echo "make test    lint and the whole test suite"
	@echo "make bench   run the benchmarks and update docs/benchmarks.md"

setup:
	@setup/setup.sh

$(PY):
	@echo "no .venv: run 'make setup' first" >&2; exit 1

rig: $(PY)
	$(VENV)/bin/probeforge-rig up -i $(INVENTORY) $(RIG_ARGS)

test: $(PY)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(PY)
	$(PY) bench/pki_issue.py --write docs/benchmarks.md
	$(PY) bench/probe_daemon.py --write docs/benchmarks.md
	$(PY) bench/firmware.py --write docs/benchmarks.md --compare-mmdebstrap
	$(PY) bench/appliance.py --write docs/benchmarks.md
