# Two commands on a fresh machine: `make run` (the whole pipeline, default recipe) and `make test`.
# Both create .venv and install the pinned versions on first use; later calls install nothing.
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml

.PHONY: run test test-fast env notebooks lab clean-env

env:
	@bash scripts/ensure_env.sh

run: env
	$(VENV)/bin/delib run $(PARAMS) --resume

# The whole suite: unit tests, pipeline tests on the real embedded model, nbval on the stage notebooks, as three
# pytest processes at once (scripts/run_tests.py says why); the 15 slowest tests are listed at the end.
test: env
	$(PY) scripts/run_tests.py

# The edit loop: unit tests only (no model server, no notebook, no training), under 2 minutes.
test-fast: env
	$(PY) -m pytest -o addopts="-p no:cacheprovider" -m "not embedded and not pipeline" tests

# Re-execute the stage notebooks in place so that their stored outputs (what nbval compares) are current.
notebooks: env
	$(PY) scripts/store_outputs.py

lab: env
	$(VENV)/bin/jupyter lab notebooks/

clean-env:
	rm -rf $(VENV)
