# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.p2p-installed
WORKSPACE ?= demo-work

.PHONY: venv demo test test-fast lint docs bench clean

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

clean:
	rm -rf $(VENV) $(WORKSPACE)
