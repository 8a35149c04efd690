# The two commands: `make demo` runs the whole system in the lab; `make test` runs the suite.
# Both install what they need first (Debian packages and a .venv), as root on Debian 12.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test unit bench lab-down clean image-files

setup:
	./lab/setup.sh

demo: setup
	$(VENV)/bin/tenantprint lab demo

test: setup
	$(PY) -m pytest tests

unit: setup
	$(PY) -m pytest tests/unit

bench: setup
	$(PY) -m bench

lab-down:
	$(VENV)/bin/tenantprint lab down

clean: lab-down
	rm -rf $(VENV) build *.egg-info

# The files the Raspberry Pi image stage installs (see docs/RASPBERRY-PI.md).
image-files: setup
	./provisioning/build-wheel.sh
