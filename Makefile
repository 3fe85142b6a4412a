# Two entry points for a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Reinstall when the dependencies change: the stamp is named after their files' hash.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-tflite.txt | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
# `make demo DEMO_ARGS=--once` runs the loop once and exits (CI); without it the demo runs until Ctrl-C.
DEMO_ARGS ?=
# Two workers, one test file each at a time: the suite runs in about half the time (10 min on 2 cores
# instead of 17); `make test PYTEST_PARALLEL=` runs it serially.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

.PHONY: install system-deps test test-all lint demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml requirements-tflite.txt | $(PY)
	$(PY) -m pip install --quiet -e '.[all,litert,dev]'
	# the tflite extra without its resolver-forced downgrades: see requirements-tflite.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-tflite.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Services the tests start themselves (Mosquitto on a free port, Chromium, promtool) must be
# installed on the machine; this installs the missing ones with apt-get when we are root.
system-deps:
	@bash scripts/system-deps.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-all: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

demo: $(STAMP) system-deps
	$(PY) scripts/demo.py $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/convert.py
	$(PY) bench/agent.py
	$(PY) bench/fleet.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-out
