# Install into a local virtual environment (.venv) and run the project's two entry points.
# torch is installed first so that pip takes the 2.13 build the project is tested with
# (on a CPU-only machine with a local wheel, that is the CPU build) before anything pulls another;
# constraints.txt keeps torch, transformers and peft at the versions CI tests (setup.cfg allows more).
# pip byte-compiles on one core; compileall does the same work on every core (about 60 s instead of 90
# on 2 cores). It exits 1 on torch's py312_intrinsics.py under an older Python, which pip skips too.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-demo test-benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile torch==2.13.0
	$(BIN)/pip install --quiet --no-compile -e ".[dev]" -c constraints.txt
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

demo: install
	$(BIN)/python demo.py --output-dir runs/demo

test: install
	$(BIN)/python -m pytest -q

# The demo at its full budget, asserting its RL gain (tests marked `demo`; tens of minutes on 2 cores).
test-demo: install
	$(BIN)/python -m pytest -q -m demo

# Each benchmark's whole command on the tiny model (tests marked `benchmark`).
test-benchmarks: install
	$(BIN)/python -m pytest -q -m benchmark

clean:
	rm -rf $(VENV) runs .cache
