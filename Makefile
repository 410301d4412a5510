# The two entry points: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU wheel of torch that lies on the CI / developer machines' disk (installs in ~30 s).
# GPU users: install the torch build for your CUDA first, then `pip install -e .`
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test setup lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/mmgpt demo

test: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
