# `make test` and `make demo` set everything up from nothing (a virtualenv in .venv),
# installing the CPU build of PyTorch first so that no CUDA packages are downloaded.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.volseg-installed
PYTEST_ARGS ?= -n 2

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "make demo: 'volseg predict' (issue 5) and the bundled model (issue 6) are not built yet;"
	@echo "this target will segment the bundled sample case once they are."
	@exit 1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
