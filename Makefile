# The two commands: `make demo` and `make test`. Everything else supports them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test proto check-proto lint typecheck bench clean serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned to the CPU build: an open range would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet -e '.[dev,plot,parquet,dspy,torch]' 'torch==2.13.0'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py
	@echo
	@echo "--- live watching: a worker reports progress, a second connection watches it ---"
	$(BIN)/python examples/progress_tracking.py
	@echo
	@echo "--- the complete optimization workflow: a bayesian search under a server lease ---"
	$(BIN)/python examples/optimization_workflow.py
	@echo
	@echo "--- DSPy: a strategy variable picks Predict or ChainOfThought per question (DummyLM) ---"
	$(BIN)/python examples/adaptive_reasoning.py

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q --doctest-modules dspex_rx
	$(BIN)/ruff check dspex_rx tests examples benchmarks
	$(BIN)/mypy

# Regenerate dspex_rx/v1 from proto/. The output is committed; tests/test_proto_fresh.py
# fails when it no longer matches proto/.
proto: $(STAMP)
	$(BIN)/python -m dspex_rx.wire._codegen

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_unary.py
	$(BIN)/python benchmarks/bench_reactive.py
	$(BIN)/python benchmarks/bench_batch.py
	$(BIN)/python benchmarks/bench_optimizer_quality.py
	$(BIN)/python benchmarks/bench_optimize.py
	$(BIN)/python benchmarks/bench_durable.py

serve: $(STAMP)
	$(BIN)/dspex-rx serve

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
