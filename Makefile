# Set-up from nothing: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use. Python 3.11+ required.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robust-ebm-installed
FMNIST := /usr/share/datasets/fashion-mnist
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k energy"`.
PYTEST_ARGS ?=

.PHONY: demo test test-oracle test-slow data venv lint typecheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	@# torch: keep one that is already installed in the venv; else the pinned CPU build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev]"
	@# Reference attack libraries list torchvision as a dependency, which must never be
	@# resolved here: install them without dependencies; their real needs are in [dev].
	$(PY) -m pip install --no-deps "torchattacks==3.5.1" "pyautoattack==0.2.0"
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (offline, no download).
data:
	@if [ -d "$(FMNIST)" ] || [ -n "$$ROBUST_EBM_DATA" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist'" \
		     "or 'robust-ebm data download fashion_mnist'"; exit 2; \
	fi

demo: venv data
	$(VENV)/bin/robust-ebm demo

# pytest exits 5 when it collects no test: an error for the main suite, a note for markers.
test: venv
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test: no test collected"; exit 1; fi; exit $$rc

# RobustBench's own model code for the zoo oracle test: its source only (--no-deps, so
# torchvision and timm never enter; the test stands in empty modules for their imports).
ROBUSTBENCH_SRC := build/oracle-robustbench
$(ROBUSTBENCH_SRC)/robustbench:
	$(PY) -m pip install --no-deps --target $(ROBUSTBENCH_SRC) "robustbench==1.1.1"

# oracle checks that are also slow (the big zoo models) run with test-slow
test-oracle: venv $(ROBUSTBENCH_SRC)/robustbench
	@ROBUSTBENCH_SRC=$(ROBUSTBENCH_SRC) $(PY) -m pytest -m "oracle and not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test-oracle: no oracle test collected"; exit 0; fi; exit $$rc

test-slow: venv data $(ROBUSTBENCH_SRC)/robustbench
	@ROBUSTBENCH_SRC=$(ROBUSTBENCH_SRC) $(PY) -m pytest -m slow $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test-slow: no slow test collected"; exit 0; fi; exit $$rc

lint: venv typecheck
	$(PY) -m ruff check src tests benchmarks

# mypy settings live in pyproject.toml [tool.mypy]
typecheck: venv
	$(PY) -m mypy src

clean:
	rm -rf $(VENV) runs
