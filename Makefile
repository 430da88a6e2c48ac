# imaging-exchange: the two commands of the README, and their parts.
#   make demo    set up, boot the local Debian 12 test host, deploy, print how to connect
#   make test    the whole suite (unit and end to end); leaves nothing running

SHELL := /bin/bash
# Debian's own Python 3.11, the same as on the servers.
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
# What this machine needs to boot test hosts and talk to them.
APT_PACKAGES := debootstrap systemd-container python3-venv openssh-client dcmtk dicom3tools zip unzip chromium \
    libopenjp2-tools orthanc

LINTED := scripts roles tests bench inventory deploy.py config.py fabfile.py

.PHONY: demo test lint unit e2e audit deps testhost testhost-down clean

demo: deps
	@$(BIN)/python -m tests.testhost up --reuse testhost
	$(BIN)/pyinfra -y inventory/testhost.py deploy.py
	@$(BIN)/python -m tests.testhost show testhost
	@echo "  partners:   $$(sed -n 's/^  - name: //p' inventory/partners.yaml | tr '\n' ' ')(inventory/partners.yaml), chrooted SFTP;"
	@echo "              without a password until staff send one: exchange partner credentials NAME"
	@echo
	$(BIN)/python -m tests.demo
	@echo "  audit it:   make audit   (reports in reports/audit.html and reports/audit.xml)"

# The auditors' suite against the running test host, as the auditor account, with reports.
audit: deps
	@mkdir -p reports
	$(BIN)/pytest tests/audit -p no:cacheprovider --hosts=ssh://127.0.0.1 \
	    --ssh-config=/var/tmp/imaging-exchange/testhosts/testhost/auditor_ssh_config \
	    --junitxml=reports/audit.xml --html=reports/audit.html --self-contained-html

# Test modules run side by side (pytest-xdist, a module to a worker, the longest first: see
# tests/conftest.py): most of an e2e module's time is spent waiting on its own test host, and the
# harness gives each host its own ports.
TEST_WORKERS ?= 2

test: deps lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: deps
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

unit: deps
	$(BIN)/pytest tests/unit

e2e: deps
	$(BIN)/pytest -m e2e

deps: $(VENV)/.installed
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PYTHON) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

testhost: deps
	@$(BIN)/python -m tests.testhost up --reuse testhost

testhost-down:
	@$(PYTHON) -m tests.testhost down

clean: testhost-down
	rm -rf $(VENV) reports
