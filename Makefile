# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the test suite needs (installed when running as root): a registry,
# four real pull clients (skopeo, containerd, docker.io's dockerd and docker, podman),
# htpasswd for the registry's basic auth, a headless browser for the status page,
# iproute2, iptables and ethtool for the network lab (testkit/netlab), and python3-libtorrent
# for the swarm benchmark's BitTorrent peers (bench/torrent_peer.py, run by Debian's
# python3), and redis-server for the supernode cluster (testkit/redisserver.py). The
# tests start each with a config of their own on 127.0.0.1; the packages' services are
# kept from starting at install (policy-rc.d), as their Debian defaults listen on all
# interfaces. gcc builds the mypyc scheduler (tests/test_compiled_scheduler.py).
APT_TEST_PACKAGES := docker-registry skopeo containerd apache2-utils chromium iproute2 iptables ethtool \
	python3-libtorrent docker.io podman redis-server nginx-light gcc

.PHONY: demo test lint typecheck unit bench clean system-deps mypyc clean-mypyc

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  else echo "make: need python3-venv (apt-get install python3-venv)"; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python bench/demo.py

system-deps:
	@missing=""; for p in $(APT_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing$$missing"; \
	    policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    status=$$?; [ -n "$$policy" ] && rm -f /usr/sbin/policy-rc.d; exit $$status; \
	  else echo "make: missing Debian packages:$$missing (run as root to install)"; fi; \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# mypy --strict on the product, testkit/, bench/ and tests/ (pyproject [tool.mypy]).
typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

unit: $(VENV)/.test-installed system-deps
	$(BIN)/python -m pytest

test: lint typecheck unit

# The scheduler compiled by mypyc, in place (setup.py; needs a C compiler and Python's
# headers): Python then imports supernode/scheduler/*.so before the sources. Build again
# after changing them (the supernode warns when a compiled module is older than its
# source); `make clean-mypyc` goes back to plain Python.
mypyc: $(VENV)/.test-installed
	DRAGONFLY_MYPYC=1 $(BIN)/python setup.py -q build_ext --inplace

clean-mypyc:
	rm -f supernode/scheduler/*.so *__mypyc.*.so

bench: $(VENV)/.installed
	$(BIN)/python bench/single.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .import_linter_cache build *.egg-info
	rm -f supernode/scheduler/*.so *__mypyc.*.so
