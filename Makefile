# Set-up on a fresh machine is part of every target: `.venv` is created when
# missing and the project is (re)installed when its metadata changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BACKENDS := $(VENV)/.backends
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

.PHONY: install lint test test-slow demo bench bench-compare dist docs clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# a venv made before 0.2 had tensorflow-cpu: remove it, or it would overlay the full tensorflow
	$(PY) -m pip uninstall --quiet --yes tensorflow-cpu 2>/dev/null || true
	$(PY) -m pip install --quiet -e ".[all,test,lint,docs]"
	touch $(STAMP)

# the other Keras backends, for the tests only: torch 2.13.0 (the CPU wheel; PyPI's default
# builds carry CUDA, ~2.7 GB) and jax[cpu]
$(BACKENDS): $(STAMP)
	$(PY) -m pip install --quiet "torch==2.13.0" "jax[cpu]>=0.4.30"
	touch $(BACKENDS)

install: $(STAMP)

# ruff (lint + format check) and mypy; `make test` runs them first
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# the prox, optimizer, controller, batchnorm and save/load tests on every Keras backend (torch also
# runs the channel rules and shrink: ~1 minute; they passed under JAX too, in ~4 minutes)
BACKEND_TESTS := tests/test_optimizer.py tests/test_callbacks.py tests/test_batchnorm.py tests/test_every_layer_pipeline.py
BACKEND_RUN    = WGSEF_CASE_FRACTION=0.1 $(PY) -m pytest -q -p no:cacheprovider -o addopts="-m 'not slow'" $(BACKEND_TESTS)

# lint, type check, the documentation site (warnings are errors), the suite (TensorFlow backend)
# with every docstring example (--doctest-modules, see pyproject.toml), then the backend tests
# under JAX (x64 on: the reference-precision checks; tests/test_backends.py covers x64 off) and torch
test: lint docs $(BACKENDS)
	$(PY) -m pytest -q -p no:cacheprovider
	KERAS_BACKEND=jax JAX_ENABLE_X64=1 $(BACKEND_RUN)
	KERAS_BACKEND=torch $(BACKEND_RUN) tests/test_layer_rules.py

test-slow: $(BACKENDS)
	$(PY) -m pytest -q -p no:cacheprovider -m slow
	KERAS_BACKEND=jax JAX_ENABLE_X64=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_every_layer_pipeline.py
	KERAS_BACKEND=torch $(PY) -m pytest -q -p no:cacheprovider tests/test_every_layer_pipeline.py

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/prox_scaling.py
	$(PY) benchmarks/step_overhead.py

bench-compare: $(STAMP)
	$(PY) benchmarks/compare.py

# the wheel and the sdist in dist/, checked by twine (metadata, README rendering, LICENSE inside)
dist: $(STAMP)
	$(PY) -m pip install --quiet "build>=1.2" "twine>=5"
	rm -rf dist build
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

# the Sphinx site in docs/_build/html: the API reference from the docstrings, the layer-support
# page from the channel-rule registry, the notebooks with their stored outputs (none executed);
# every warning is an error
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache docs/_build docs/generated
