# reduxd: `make demo` runs the service on a simulated night, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: venv bytecode demo test test-fast lint bench clean

# The bytecode of reduxd's modules, as `pip install` writes it: an editable install
# has none where PYTHONDONTWRITEBYTECODE is set, and each `reduxd` started would
# compile the package again (about 0.2 s).
venv: $(VENV)/.installed bytecode

bytecode: $(VENV)/.installed
	$(PY) -m compileall -q reduxd

$(VENV)/.installed: pyproject.toml setup.py $(wildcard reduxd/*.pyx reduxd/*/*.pyx)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The daemon on the default config.toml while the simulator writes a night in
# real time into the watched folder (demo/night); products in demo/analysis.
# The live page is served while it runs, then by `reduxd serve` for 10 minutes.
demo: venv
	rm -rf demo
	@echo "reduxd demo: open http://127.0.0.1:8750/ in a browser to watch the night live"
	$(BIN)/reduxd simulate demo/night --realtime --cadence 1.0 --n-bias 5 --n-darks 5 \
		--n-flats 5 --n-lights 12 --lights-per-run 2 --transit-depth 0.05 \
		--target-flux 8000 & \
	sim=$$!; \
	$(BIN)/reduxd watch --config config.toml --exit-when-idle 15; status=$$?; \
	wait $$sim; \
	$(BIN)/reduxd status --config config.toml; $(PY) -m reduxd.demo demo/analysis; \
	echo "reduxd demo: night over; http://127.0.0.1:8750/ stays up 10 min (Ctrl-C stops)"; \
	timeout --foreground -s INT 600 $(BIN)/reduxd serve --config config.toml; exit $$status

test: venv lint
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check reduxd tests benchmarks
	$(BIN)/ruff format --check reduxd tests benchmarks

bench: venv
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache *.egg-info
