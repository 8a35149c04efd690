# The two commands: `make demo` runs the whole system in the lab; `make test` runs the suite.
# Both install what they need first (Debian packages and a .venv), as root on Debian 12.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-vm unit bench lab-down clean image image-setup image-twin image-check

setup:
	./lab/setup.sh

demo: setup
	$(VENV)/bin/tenantprint lab demo

test: setup
	$(PY) -m pytest tests

# The VM MFP's scenarios in full, the on-demand ones too (the power cut: a second boot under TCG), and
# the scenario suite on the VM bench (tests/hil/envs/vm.toml)
test-vm: setup
	TP_ON_DEMAND=1 $(PY) -m pytest tests/vm
	TP_HIL_ENV=tests/hil/envs/vm.toml $(PY) -m pytest tests/hil/test_scenarios.py

unit: setup
	$(PY) -m pytest tests/unit

bench: setup
	$(PY) -m bench

lab-down:
	$(VENV)/bin/tenantprint lab down

clean: lab-down
	rm -rf $(VENV) build *.egg-info

# The device image (provisioning/image/build-image, docs/RASPBERRY-PI.md section 1): Debian packages and
# the firmware's wheel, built with mmdebstrap, cached by content in $(IMAGE_CACHE). Needs root.
IMAGE_CACHE ?= /var/cache/tenantprint-image
IMAGE_OUT ?= build/image

# The Raspberry Pi 3/4 SD card image (arm64, emulated: ~25 min cold): $(IMAGE_OUT)/pi/tenantprint-pi.img
image: image-setup
	./provisioning/image/build-image --target pi --cache $(IMAGE_CACHE) --out $(IMAGE_OUT)/pi

image-setup:
	APT_LISTS="lab/apt-packages.txt provisioning/image/host-packages.txt" ./lab/setup.sh

# The amd64 twin for QEMU (vmlinuz, initrd.img, root.img, state.img): $(IMAGE_OUT)/twin
image-twin: setup
	./provisioning/image/build-image --target twin --cache $(IMAGE_CACHE) --out $(IMAGE_OUT)/twin

# Boot the Pi image on QEMU's raspi3b (as an SD card) and on virt, and run its self-check there.
image-check: image
	./provisioning/image/image-check $(IMAGE_OUT)/pi --log-dir $(IMAGE_OUT)/check
