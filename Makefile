# flow2seg_ros: `make demo` runs the node on the bundled model; `make test` runs the tests.
# Both create .venv and install requirements.txt on first use (torch comes from this disk or PyPI).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Keep DDS on this machine, and give each make invocation its own domain so parallel runs do not
# hear each other. Large camera images need the shipped Fast DDS profile (see README).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= $(shell $(PYTHON) -c 'import os; print(os.getppid() % 100 + 1)')
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_large_images.xml

.PHONY: install demo test test-all bench lint clean

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

test-all: install
	$(PY) -m pytest test --run-slow $(PYTEST_ARGS)

bench: install
	$(PY) -m flow2seg_ros.bench

clean:
	rm -rf build install log demo_out .pytest_cache *.egg-info
