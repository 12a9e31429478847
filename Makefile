# The two commands of the README. Both install what they need first (scripts/bootstrap.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo rehearsal bootstrap lint format

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

demo: bootstrap
	$(PY) jobs/demo.py

# The multi-node rehearsal (infra/rehearsal/run.py): 3 Ray nodes, S3 (moto) and an MLflow server on this machine,
# the README's commands, a node and a Serve replica killed; the result goes to benchmarks/results/rehearsal.json.
rehearsal: bootstrap
	nice -n 19 $(PY) infra/rehearsal/run.py --out benchmarks/results/rehearsal.json

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: bootstrap
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
