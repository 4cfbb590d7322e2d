# Single entry point for people and CI. Everything runs from the repo root.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv always through the Python that runs it (`python -m uv`), installed with pip when
# missing: no guessing where pip put the binary on a fresh machine.
UV := $(PYTHON) -m uv
PACKAGES := $(wildcard schemas bandit_core stream_runtime offpolicy services dashboard mab_cli clients/python/mab_client clients/spec deploy demo_traffic bench examples)

.PHONY: help venv up down status test lint system-deps stack-deps kafka-jars bench contract

help:
	@echo "make venv | up | down | status | test | lint | system-deps | stack-deps | kafka-jars"

venv:
	@$(UV) --version >/dev/null 2>&1 || { \
		echo "installing uv with pip"; \
		$(PYTHON) -m pip --version >/dev/null 2>&1 || bash deploy/install_system_deps.sh pip; \
		$(PYTHON) -m pip install --quiet uv 2>/dev/null \
			|| $(PYTHON) -m pip install --user --quiet uv 2>/dev/null \
			|| $(PYTHON) -m pip install --user --quiet --break-system-packages uv; \
	}
	@if [ -f uv.lock ]; then $(UV) sync --all-extras --frozen; else $(UV) sync --all-extras; fi

# Debian/Ubuntu packages, installed only when missing (as root or with sudo; without
# either the script prints the apt-get command to run). stack-deps: what `make up` needs
# (Java 17+, Maven, redis-server); system-deps: that plus the tests' wrk and Chromium.
system-deps:
	bash deploy/install_system_deps.sh

stack-deps:
	bash deploy/install_system_deps.sh stack

kafka-jars: venv
	$(BIN)/mab kafka-jars

up: stack-deps venv
	$(BIN)/mab up

down:
	@if [ -x $(BIN)/mab ]; then $(BIN)/mab down; else echo "no venv, nothing started"; fi

status: venv
	$(BIN)/mab status

# Jars are fetched before pytest so a cold Maven download never eats a test's timeout.
test: venv system-deps kafka-jars lint
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(PACKAGES) tests
	$(BIN)/lint-imports

bench: venv system-deps kafka-jars
	$(BIN)/python -m bench.run

# Regenerate the topic contract (JSON Schema + AsyncAPI) from schemas/events.py.
contract: venv
	$(BIN)/mab contract
