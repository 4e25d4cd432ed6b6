# Two commands do the whole set-up on a fresh machine:
#   make demo   -- create .venv, install grmpose, run the main job
#   make test   -- create .venv, install grmpose, run the linter and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0" -e ".[onnx,video,tensorboard,track,dev]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/grmpose demo

test: $(BIN)/.installed
	$(BIN)/ruff check grmpose tests benchmarks
	$(BIN)/python -m pytest -q

.PHONY: install demo test
