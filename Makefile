# `make demo` and `make test` each create .venv when missing and install what they need.
# torch goes in first and pinned here (TORCH=...), so pip never swaps it for a multi-GB CUDA build;
# pyproject only says torch>=2.5 (SDPA enable_gqa) for GPU pods.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/demo

.PHONY: demo test install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(DEMO_DATA)/.ready: $(STAMP)
	$(PY) -m pipeline data stdlib-corpus --out $(DEMO_DATA)/corpus.jsonl
	$(PY) -m pipeline data prepare --text $(DEMO_DATA)/corpus.jsonl --vocab 512 --out $(DEMO_DATA)
	touch $@

demo: $(STAMP) $(DEMO_DATA)/.ready
	$(PY) -m pipeline run jobs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf $(DEMO_DATA) store/demo results/demo
