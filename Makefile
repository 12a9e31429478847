# The two commands of the README. Both install what they need first (scripts/bootstrap.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test test-fast demo rehearsal table1 vocoder bootstrap lint typecheck layers format faults tracking-outage

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	$(MAKE) --no-print-directory layers
	$(PY) -m pytest -q

# The unit tests: everything but the runs marked `slow` and the tests that start a Ray cluster (`ray`);
# `make test` runs them all.
test-fast: bootstrap
	$(PY) -m pytest -q -m "not slow and not ray"

# mypy on clipsynth_core and clipsynth_platform (pyproject's [tool.mypy]); platform/ is read through a link
# named by its import name.
typecheck: bootstrap
	@mkdir -p build/mypy && ln -sfn ../../platform build/mypy/clipsynth_platform
	$(VENV)/bin/mypy

# The import contracts of pyproject's [tool.importlinter] (import-linter): the core never imports the platform,
# Ray or MLflow; the platform's packages import only the layers below them; no cycles between the modules of a
# package. Run from build/mypy, where platform/ is linked under its import name.
layers: bootstrap
	@mkdir -p build/mypy && ln -sfn ../../platform build/mypy/clipsynth_platform
	cd build/mypy && $(abspath $(VENV))/bin/lint-imports --config ../../pyproject.toml --no-cache

demo: bootstrap
	$(PY) jobs/demo.py

# The multi-node rehearsal (infra/rehearsal/run.py): 3 Ray nodes, S3 (moto) and an MLflow server on this machine,
# the README's commands, a node and a Serve replica killed; the result goes to benchmarks/results/rehearsal.json.
rehearsal: bootstrap
	$(PY) infra/rehearsal/run.py --out benchmarks/results/rehearsal.json

# The demo's HiFi-GAN trained to the CPU recipe for 20 minutes (the recipe measured by benchmarks/vocoder, where
# it stays short of Griffin-Lim in CPU minutes: the demo keeps serving Griffin-Lim), compared with Griffin-Lim on
# the same mels, its bundle (serving the HiFi-GAN) registered as clipsynth-demo-hifigan: jobs/vocoder.py.
vocoder: bootstrap
	test -f demo_output/demo_summary.json || $(PY) jobs/demo.py
	$(PY) jobs/vocoder.py --out demo_output

# Table 1 on the built-in corpus: the demo's shards and mel classifier (`make demo` builds them first; a
# finished demo is reused), three variants x 1,200 steps (an estimate from the ~4 steps/s measured in-process:
# 15 minutes of training plus evaluation; `make table1` itself has not been timed yet); with `make vocoder`'s
# HiFi-GAN when it is there (every bundle carries it; its reconstruction row beside Griffin-Lim's).
table1: bootstrap
	test -d demo_output/shards || $(PY) jobs/demo.py
	$(PY) jobs/table1.py --data demo_output/shards --mel-classifier demo_output/mel_classifier --out table1_output \
		$(if $(wildcard demo_output/bundles/hifigan/bundle.json),--vocoder demo_output/bundles/hifigan)

# The faults of issue 28, injected: S3 that throttles, resets and stalls (ingestion, fetching, training), an
# MLflow server killed mid-run and at the end, checkpoints cut short or missing a file. Each test's account
# (injected, what the platform did, what was lost) goes to benchmarks/results/faults_cpu.json.
faults: bootstrap
	rm -f benchmarks/results/faults_cpu.json
	CLIPSYNTH_FAULT_RECORD=benchmarks/results/faults_cpu.json $(PY) -m pytest -q tests/test_s3_faults.py \
		tests/test_tracking_outage.py tests/test_whole_checkpoints.py

# The long tracking outage: MLflow killed for 300 s (longer than its client's default retries) under a real
# training job; throughput before/during/after and every step once, in benchmarks/results/tracking_outage_cpu.json.
tracking-outage: bootstrap
	$(PY) benchmarks/faults/tracking_outage.py

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	$(MAKE) --no-print-directory layers

format: bootstrap
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
