# The two commands of the README. Each creates .venv (Python 3.11) and installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -r requirements.txt
	$(PY) -m pip install --quiet --no-cache-dir --no-deps --no-build-isolation -e .
	touch $@

demo: $(VENV)/.installed  ## synthetic data -> train -> evaluate -> infer -> pictures, under outputs/demo
	$(PY) -m tools.demo

test: $(VENV)/.installed  ## the whole test suite (CI runs exactly this)
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .

bench: $(VENV)/.installed
	$(PY) bench/bench_codec.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_detection.py
	$(PY) bench/bench_onnx.py

clean:
	rm -rf outputs runs data/synthetic_keypoints data/synthetic_detection
