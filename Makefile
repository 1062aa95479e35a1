# Set-up and everyday tasks. VENV=path puts the virtual environment elsewhere (CI keeps one outside the
# clone, so torch is not reinstalled on every run).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP_INSTALL := $(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt
# Test processes (pytest-xdist), one torch thread each (tests/conftest.py): 2 fills CI's 2 cores.
TEST_WORKERS ?= 2

.PHONY: install demo test lint models bench clean

install:
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PIP_INSTALL) -e ".[dev]"

demo: install
	$(VENV)/bin/senet demo

test: install
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS)

# Style (ruff: format, import sorting, bugbear; lines <= 110), the layers contract (import-linter, in
# pyproject.toml), no import cycle and no stray function-local import (tests/test_layers.py), and no run of six
# or more lines repeated in src (pylint's duplicate-code).
lint: install
	$(VENV)/bin/ruff format --check src tests benchmarks hubconf.py
	$(VENV)/bin/ruff check src tests benchmarks hubconf.py
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_layers.py
	$(VENV)/bin/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --ignore-imports=yes \
		--ignore-signatures=yes --ignore-docstrings=yes --ignore-comments=yes src/senet

bench: install
	$(PIP_INSTALL) -e ".[dev,bench]"
	$(VENV)/bin/senet bench --report docs/benchmarks.md
	# every command of the GPU script at toy sizes on the CPU (the input pipeline's smoke case among them)
	PYTHON=$(PYTHON) bash benchmarks/gpu_proof.sh smoke

models: install
	$(VENV)/bin/senet models

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
