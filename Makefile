# Two entry points, each working on a fresh machine with nothing installed:
#   make demo   set up .venv and run the main job (train the toy model, show the FFN effect)
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel, so that installing the project never pulls a CUDA build;
# the project itself only asks for torch>=2.6 (override TORCH= for another build).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.mechtrunc-installed
# The kernels the docs' numbers were produced with: torch's AVX2 kernels on x86-64 (set
# ATEN_CPU_CAPABILITY= yourself to override).  Other CPUs can still give other last digits; what
# holds on any machine is the bands of docs/results.md, "Numbers across machines".
ifneq ($(filter x86_64 amd64,$(shell uname -m)),)
export ATEN_CPU_CAPABILITY ?= avx2
endif

.PHONY: demo test test-fast bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mechtrunc demo

# pytest exits 5 when it collected no test: that is a broken setup, not a pass.
# tools/ensure-chromium.sh installs Debian's Chromium for the browser tests when it is missing.
# -n auto: one pytest-xdist worker per core (at most 4, tests/conftest.py), each on one torch
# thread; --dist worksteal: each worker runs a contiguous share of the suite (a module's fixtures
# are built once) and an idle worker takes half of the other's remaining tests, so the long tests
# at the end do not leave a core idle.  `make test TEST_WORKERS=` runs in one process.
TEST_WORKERS ?= -n auto --dist worksteal
test: $(STAMP)
	@bash tools/ensure-chromium.sh
	@$(BIN)/python -m pytest -q $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (broken setup)"; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(MAKE) test PYTEST_ARGS="-m 'not slow'"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generator.py
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/bench_hook_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
