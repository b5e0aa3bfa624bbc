# Set-up is part of every target: `make demo` and `make test` create or refresh
# the virtualenv in .venv on their own, and do nothing extra when it is current.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedguard-installed
# torch is pinned so that set-up is repeatable; the CPU build is enough for
# everything fedguard does (pip installs the build its configured index offers).
TORCH  ?= torch==2.13.0

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,dp]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedguard demo --output-dir demo-output

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/inspect_speed.py

clean:
	rm -rf $(VENV) demo-output
