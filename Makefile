# The two commands of the README. Both install what they need first (scripts/bootstrap.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo bootstrap lint format

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

demo: bootstrap
	$(PY) jobs/demo.py

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: bootstrap
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
