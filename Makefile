# The kit's two commands: `make test` (the suite) and `make demo` (the whole encrypted job, locally).
# PYTHON=python3.12 installs requirements/lock-py312.txt instead of requirements/lock.txt.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PY_MINOR := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
LOCK   := $(if $(filter 3.12,$(PY_MINOR)),requirements/lock-py312.txt,requirements/lock.txt)
STAMP  := $(VENV)/.installed

.PHONY: venv test lint demo demo-digits bench check-wheels clean

venv: $(STAMP)

# Reinstall only when the lock or the project metadata changes.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

demo: venv
	$(PY) -m local_mode.demo $(DEMO_ARGS)

demo-digits: venv
	$(PY) -m local_mode.demo --case digits $(DEMO_ARGS)

bench: venv
	$(PY) -m bench $(BENCH_ARGS)

# Does every pin of the lock have a wheel for this Python on manylinux x86_64? (needs the index)
check-wheels:
	$(PYTHON) requirements/check_wheels.py --python-version $(PY_MINOR) $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
