# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.p2p-installed
WORKSPACE ?= demo-work

.PHONY: venv demo test test-fast lint docs bench gpu-wheels clean

venv: $(STAMP)

# pip (not uv/poetry): without a GPU, torch==2.13.0 resolves to a local CPU wheel in seconds;
# with one (or where that wheel is absent) pip takes the regular build. torch is not pinned in
# pyproject.toml.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch==2.13.0 || echo "note: no local CPU torch wheel; pip picks one"; \
	fi
	$(PY) -m pip install -q -e '.[dev,onnx]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/p2p demo --workspace $(WORKSPACE)

test: venv
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy p2p flows tasks

# The reference pages generated from the code (tests/test_docs.py fails when they are stale).
docs: venv
	$(PY) -m p2p.app.reference docs

bench: venv
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/tiling.py
	$(PY) benchmarks/inference.py

# The packages benchmarks/gpu_checks.sh needs that a bare CUDA image (Python 3.12, torch,
# numpy, pandas, pytest; docs/measurements.md, "GPU checks") lacks, as wheels in .whl/ for a
# machine with no package index; the versions are this venv's.
GPU_WHEELS := rasterio affine cligj click-plugins pydantic pydantic_core annotated-types \
	typing-inspection zarr numcodecs donfig google-crc32c dask distributed locket partd tblib \
	tornado zict rioxarray pyproj
gpu-wheels: venv
	mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl \
		$$($(PY) -m pip freeze | grep -i -E "^($$(echo $(GPU_WHEELS) | tr ' ' '|'))==")

clean:
	rm -rf $(VENV) $(WORKSPACE)
