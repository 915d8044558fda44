# TraceCode developer entry points. Everything runs from a local virtual environment that
# this Makefile creates from pyproject.toml, so a fresh machine needs only python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench check-firmware clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tracecode demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

check-firmware: $(STAMP)
	$(BIN)/python tools/check_firmware.py

bench: $(STAMP)
	$(BIN)/python tools/bench_match.py

clean:
	rm -rf $(VENV) out .pytest_cache
