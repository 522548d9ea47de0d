# fairseq-halo: `make demo` runs the whole pipeline on built-in demo data, `make test` the tests.
# Both first create or update the virtual environment in $(VENV) (see scripts/setup_env.sh).

VENV ?= .venv
export VENV
PYTEST_ARGS ?= -q

.PHONY: setup demo test

setup:
	bash scripts/setup_env.sh

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/python -m pytest $(PYTEST_ARGS) tests
