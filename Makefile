# `make demo`: set up a virtual environment and mine triples from the shared SciFact sample.
# `make test`: set up the same environment and run the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
OUT ?= out/scifact
WORK ?= work
# The demo mines every source; ann embeds the corpus once (a few minutes on CPU), later runs reuse the cache.
MIX ?= impression:2,bm25:3@10-50,ann:3@30-100,gold:1,random:1
# Compute precision of the models (auto: bf16 on CPUs with native bf16); `make demo PRECISION=fp32` for fp32.
PRECISION ?= auto
export HF_HUB_OFFLINE := 1
export TRIPLEMINER_DATA := $(abspath $(DATA))

.PHONY: install demo test test-fast bench cluster-check clean

install: $(VENV)/.installed

# torch first and pinned, so that pip takes the CPU build and never pulls a CUDA one.
$(VENV)/.installed: setup.py requirements.txt requirements-train.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/tripleminer mine \
	  --corpus $(DATA)/scifact/corpus.jsonl \
	  --queries $(DATA)/scifact/queries.jsonl \
	  --qrels $(DATA)/scifact/qrels/train.tsv \
	  --query_log $(DATA)/scifact/query_log.train.jsonl \
	  --negatives "$(MIX)" --precision $(PRECISION) \
	  --work_dir $(WORK) --output $(OUT) --overwrite
	$(VENV)/bin/tripleminer report $(OUT)
	@echo "Triples in $(OUT)/, stats in $(OUT)/stats.json, report in $(OUT)/report/index.html"

test: install
	$(PY) -m pytest -q tests

# The sub-minute loop: no shared data, no models.
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) benchmarks/mine_speed.py

# The cluster path: EXTERNAL SDK workers of a separate worker pool, every path on a local S3 server (moto),
# rows vs the in-memory DirectRunner, a killed run resumed; prints wall times and the object store traffic.
cluster-check: install
	$(PY) benchmarks/cluster_path.py

clean:
	rm -rf out work .pytest_cache
