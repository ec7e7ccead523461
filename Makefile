# Two commands on a fresh machine: `make run` (the whole pipeline, default recipe) and `make test`.
# Both create .venv and install the pinned versions on first use; later calls install nothing.
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml

.PHONY: run test env notebooks lab clean-env

env:
	@bash scripts/ensure_env.sh

run: env
	$(VENV)/bin/delib run $(PARAMS) --resume

test: env
	$(PY) -m pytest

# Re-execute the stage notebooks in place so that their stored outputs (what nbval compares) are current.
notebooks: env
	$(PY) scripts/store_outputs.py

lab: env
	$(VENV)/bin/jupyter lab notebooks/

clean-env:
	rm -rf $(VENV)
