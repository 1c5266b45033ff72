# One venv per checkout; slow artefacts (llama.cpp build, models) are cached under ~/.cache/llamafleet.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

system-deps:
	@bash ci/system-deps.sh

setup: system-deps $(STAMP)
	$(BIN)/python -m llamafleet.rig.cache

demo: setup
	$(BIN)/llamafleet demo

test: setup
	$(BIN)/python -m pytest

schema: $(STAMP)
	$(BIN)/llamafleet schema --write

clean:
	rm -rf $(VENV)
