# revhpo: the two commands a fresh machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
# Parallel test processes (pytest-xdist): many tests wait on real servers and subprocesses.
TEST_WORKERS ?= 2

.PHONY: run test test-fast lint fmt bench venv clean browser

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Debian's Chromium for the dashboard's real-browser tests (tests/browser). Installed when missing;
# only when it truly cannot be installed (no apt-get, no root) do those tests skip, with a message.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1 && { \
	  command -v chromium >/dev/null 2>&1 || $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: the browser tests will skip"; } || \
	  echo "no apt-get: install Chromium yourself for the browser tests (they skip without it)"

run: venv
	$(VENV)/bin/revhpo demo

test: venv lint browser
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

# The fast tier (about 2 minutes on 2 cores; the whole suite about 12): everything not marked `slow` (long exactness runs,
# finite-difference and unrolled-autodiff sweeps, real TensorFlow jobs in subprocesses).
test-fast: venv lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(PY) -m pip install -q "optuna>=4,<6"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
