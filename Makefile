# `make test` and `make demo` set everything up from nothing (a virtualenv in .venv),
# installing the CPU build of PyTorch first so that no CUDA packages are downloaded.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.volseg-installed
PYTEST_ARGS ?= -n 2

.PHONY: install browser test test-fast lint demo int8-bundles bench-env gpu-wheels gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,openvino]"
	touch $(STAMP)

# The run report's QC page is tested in a real browser: Debian's chromium, installed here when
# missing and apt can (as root); otherwise that one test skips with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
		apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || echo "chromium is not installed: the QC page test will skip"

# Everything that can run here: lint, then the whole suite (tests marked gpu skip without CUDA,
# realdata ones without ../shared/data, the QC page test without chromium).
test: $(STAMP) lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier for the edit-test loop: no slow, real-data or GPU tests (about a minute on 2 cores).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow and not realdata and not gpu"

lint: $(STAMP)
	$(BIN)/ruff check volseg tests scripts
	$(BIN)/ruff format --check volseg tests scripts

SAMPLE := volseg/models/hippocampus_sample
DEMO_OUT := demo_output

# The main job: segment the bundled sample MRI with the bundled hippocampus model.
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/volseg predict -m hippocampus -i $(SAMPLE) -o $(DEMO_OUT) --stats --preview --overwrite
	@echo "outputs: $$(ls $(DEMO_OUT) | sed 's|^|$(DEMO_OUT)/|' | tr '\n' ' ')"

# The int8 bundled models (hippocampus-int8, brats-int8) from the bundled ones: calibrated on
# ../shared/data, each refused (and not written) if any label's or region's mean Dice on held-out
# cases drops by more than 0.005. Minutes of CPU: run it on an idle machine.
SHARED_DATA ?= ../shared/data

int8-bundles: $(STAMP)
	$(BIN)/volseg quantize hippocampus --calibration $(SHARED_DATA)/msd-hippocampus -o volseg/models/hippocampus-int8.pt --overwrite
	$(BIN)/volseg quantize brats --calibration $(SHARED_DATA)/brats2018 -o volseg/models/brats-int8.pt --overwrite

# A separate environment for scripts/bench_inference.py with nnU-Net v2 beside volseg, so that
# the benchmark can time nnU-Net's own predictor; nnunetv2 stays out of volseg's dependencies
# and out of $(VENV). The constraints file keeps pip on the same CPU torch; torchvision (pulled
# in by nnU-Net's network package) is removed again: the only build matching this torch is a
# CUDA one that fails to import, and nnU-Net's predictor does not need it.
BENCH_VENV  := .venv-bench
BENCH_BIN   := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.bench-installed

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml scripts/bench-constraints.txt
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --quiet $(TORCH)
	$(BENCH_BIN)/python -m pip install --quiet -c scripts/bench-constraints.txt -e . nnunetv2
	$(BENCH_BIN)/python -m pip uninstall --quiet -y torchvision
	touch $(BENCH_STAMP)

# Wheels for a GPU machine without network, where scripts/gpu_check.sh installs them with
# `pip install --no-index --find-links`: what volseg needs beyond a PyTorch GPU image. Assumed there:
# a CUDA build of torch (never downloaded here: it comes with the machine or from its own index),
# numpy, scipy, pyyaml, tqdm, matplotlib, tensorboard and pytest. Same versions as $(VENV), for
# GPU_PYTHON (the GPU machine's Python) on x86-64 Linux. SimpleITK (50 MB) is left out: volseg
# imports it only to read NRRD/MHA/DICOM and for connected components, which the check never uses,
# and the device tool carries at most 64 MiB with the checkout.
GPU_WHEELS   ?= .gpu-wheels
GPU_PYTHON   ?= 3.12
GPU_PACKAGES := '^(monai|nibabel)=='
GPU_PLATFORM := $(foreach p,manylinux_2_28 manylinux_2_17 manylinux2014,--platform $(p)_x86_64)

gpu-wheels: $(STAMP)
	mkdir -p $(GPU_WHEELS)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
		--python-version $(GPU_PYTHON) $(GPU_PLATFORM) --dest $(GPU_WHEELS) \
		$$($(BIN)/python -m pip freeze | grep -iE $(GPU_PACKAGES))
	@ls $(GPU_WHEELS)

# On a CUDA machine, after `make gpu-wheels` here and copying the checkout there (see docs/performance.md).
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info .pytest_cache $(DEMO_OUT)
