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

SAMPLE := volseg/models/hippocampus_sample
DEMO_OUT := demo_output

# The main job: segment the bundled sample MRI with the bundled hippocampus model.
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/volseg predict -m hippocampus -i $(SAMPLE) -o $(DEMO_OUT) --stats --preview --overwrite
	@echo "outputs: $$(ls $(DEMO_OUT) | sed 's|^|$(DEMO_OUT)/|' | tr '\n' ' ')"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(DEMO_OUT)
