# flow2seg_ros: `make demo` runs the node on the bundled model; `make test` runs the tests.
# Both create .venv and install requirements.txt on first use (torch comes from this disk or PyPI).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Keep DDS on this machine, with a domain of this make run's own so parallel runs do not hear
# each other, and the shipped large-image Fast DDS profile (README, "Large images over DDS").
# flow2seg_ros/dds.py is the one definition (standard library only); what you set is kept.
DDS_ENV := $(shell cd $(CURDIR) && $(PYTHON) -m flow2seg_ros.dds)
$(foreach kv,$(DDS_ENV),$(eval export $(kv)))

.PHONY: install demo test bench lint clean gpu-check

install: $(STAMP)

# With a sourced ROS 2 distribution, its rclpy is used (system site packages) and the PyPI
# ROS wheels (lines starting with `ros-`) are left out.
$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(if $(ROS_DISTRO),--system-site-packages) $(VENV)
	$(PY) -m pip install --upgrade pip
	@if [ -n "$(ROS_DISTRO)" ]; then \
	  echo "ROS_DISTRO=$(ROS_DISTRO) is sourced: using its rclpy, not the ros-* wheels"; \
	  grep -v '^ros-' requirements.txt > $(VENV)/requirements.filtered.txt; \
	else cp requirements.txt $(VENV)/requirements.filtered.txt; fi
	$(PY) -m pip install -r $(VENV)/requirements.filtered.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(PY) -m flow2seg_ros.demo

test: install
	$(PY) -m pytest test $(PYTEST_ARGS)

bench: install
	$(PY) -m flow2seg_ros.bench

# On a machine with an NVIDIA GPU, from a plain copy of the repository (no venv needed: torch,
# torchvision, OpenCV, numpy, safetensors, PyYAML): the tests marked cuda, then the device path
# timed over both presets, sizes, precisions and CUDA graphs on/off; one table, one JSON under
# $OUT (else gpu_check_out/), under 5 minutes; non-zero exit when a CUDA test fails.
GPU_CHECK_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_CHECK_PYTHON) -m flow2seg_ros.gpu_check $(GPU_CHECK_ARGS)

lint: install
	$(PY) -m flake8 flow2seg_ros launch test benchmarks setup.py

clean:
	rm -rf build install log demo_out .pytest_cache *.egg-info
