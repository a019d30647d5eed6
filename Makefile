# clsmon — the two commands a new machine needs are `make demo` and `make test`;
# both set themselves up (venv in .venv, project + dev extras, and a broker: Apache Kafka from
# Maven Central jars, fetched by Maven on first use into ~/.cache/clsmon; needs Java 17+).
PYTHON ?= python3
# the tests' broker: kafka (Apache Kafka, what CI uses), embedded (Tansu), auto, or HOST:PORT
CLSMON_TEST_BROKER ?= kafka
export CLSMON_TEST_BROKER
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the compiled engine: detectors/ built by mypyc into $(VENV)/clsmon-engine (streams/ops/engine.py);
# the mark is touched even when the build fails (no C compiler: clsmon runs interpreted), so it is
# retried only when a source changes; clsmon itself never runs a build older than the sources.
# streams/ops/engine.py writes and checks the build's stamp: after an edit there, `ensure` rebuilds
# only if the build no longer passes the check
ENGINE := $(VENV)/.engine
READY  := $(STAMP) $(ENGINE)

.PHONY: install engine test lint typecheck screenshots demo bench bench-replay-10m bench-replay-10m-interpreted bench-stream bench-load bench-soak bench-hl7 mutation clean help

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

$(ENGINE): $(STAMP) streams/ops/engine.py $(shell find detectors -name '*.py' -not -path '*/__pycache__/*')
	$(BIN)/python -m streams.ops.engine ensure
	@touch $@

install: $(READY)  ## create .venv, install clsmon with its dev extras, compile the engine (mypyc)

engine: $(STAMP)  ## (re)compile detectors/ with mypyc into .venv/clsmon-engine unless an up-to-date build is there
	$(BIN)/python -m streams.ops.engine ensure
	@touch $(ENGINE)

lint: $(STAMP)  ## ruff over the code
	$(BIN)/ruff check detectors streams tests bench

typecheck: $(STAMP)  ## mypy: strict on detectors/, default strictness on streams/
	$(BIN)/mypy

test: $(READY)  ## lint, type check, then every test (on Apache Kafka: CLSMON_TEST_BROKER=kafka)
	$(BIN)/ruff check detectors streams tests bench
	$(BIN)/mypy
	$(BIN)/pytest

screenshots: $(STAMP)  ## retake the board screenshots in docs/board/ (real browser); check them by eye
	CLSMON_SCREENSHOTS=docs/board $(BIN)/pytest -q tests/test_board_browser.py

demo: $(READY)  ## broker (Apache Kafka, else Tansu) + worker + notifier + ward board + simulated patients (board :8080)
	$(BIN)/clsmon demo

bench: $(READY)  ## benchmarks; figures printed and written to bench/results/
	$(BIN)/python bench/replay_bench.py

bench-replay-10m: $(READY)  ## replay in bounded memory: 10M rows, obs/s and peak RSS, the engine as shipped (same alerts as in memory)
	$(BIN)/python bench/chunked_replay_bench.py --rows 10000000

bench-replay-10m-interpreted: $(READY)  ## the same on the interpreted engine, for comparison
	$(BIN)/python bench/chunked_replay_bench.py --rows 10000000 --engine interpreted

# mutation testing has its own venv: mutmut 3.8 needs click >= 8.4.2, faust-streaming 0.15.3
# click < 8.4 (the mutated tests never start Faust), so it is installed after the project
MVENV  := .venv-mutation
MUTMUT := mutmut==3.8.1

$(MVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MVENV)
	$(MVENV)/bin/pip install --quiet --upgrade pip
	$(MVENV)/bin/pip install --quiet -e '.[dev]'
	$(MVENV)/bin/pip uninstall --quiet --yes clsmon  # its dependencies stay; the code under test is mutmut's copy
	$(MVENV)/bin/pip install --quiet '$(MUTMUT)'
	@touch $@

mutation: $(MVENV)/.installed  ## mutation testing of detectors/ (mutmut, own venv; slow, not in make test); score written under bench/results/
	$(MVENV)/bin/python bench/mutation.py

clean:  ## remove the venvs and caches
	rm -rf $(VENV) $(MVENV) mutants .pytest_cache .ruff_cache .hypothesis

bench-stream: $(READY)  ## stream benchmark, Apache Kafka and Tansu, 3 rounds: obs/s vs a trivial agent, latency at 1,000/s
	$(BIN)/python bench/stream_bench.py

bench-load: $(READY)  ## load: growth with beds (500/1,000/2,000, two workers, 5 sim. min at 10x; ~2 min)
	$(BIN)/python bench/load_bench.py --beds 500 1000 2000 --time-scale 10 --minutes 5

bench-soak: $(READY)  ## 2,000 beds, 30 minutes in real time: throughput, latency, RSS slope, plot
	$(BIN)/python bench/load_bench.py --beds 2000 --time-scale 1 --soak 1800

bench-hl7: $(STAMP)  ## HL7 listener: messages/s through MLLP to Kafka with ACKs, 1 and 16 connections (~1 min)
	$(BIN)/python bench/hl7_bench.py
