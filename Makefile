# make test      : create .venv with the pinned stack (and .suites/: X-ARES, MTEB) if needed, lint, then run the whole
#                  test suite (CI).
# make test-fast : the tests not marked slow (no end-to-end runs of the scripts in fresh interpreters).
# make lint      : ruff on the repository, mypy on upstream/ (settings in pyproject.toml).
# make demo      : the offline end-to-end demo (pretrain tiny EnCodecMAE, probe, compare).
PY := .venv/bin/python

.PHONY: setup lint test test-fast demo bench

setup:
	bash scripts/setup_venv.sh
	bash scripts/setup_suites.sh

lint: setup  # both checks run, then it fails if either found something
	@status=0; .venv/bin/ruff check . || status=1; bash scripts/typecheck.sh || status=1; exit $$status

test: setup lint
	$(PY) -m pytest tests -q -n 2 --dist loadfile

test-fast: setup
	$(PY) -m pytest tests -q -m "not slow" -n 2 --dist loadfile

demo: setup
	$(PY) -m encodecmae_s3prl.demo

bench: setup
	$(PY) benchmarks/limits.py
	$(PY) benchmarks/extraction_rtf.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/data_pipeline.py
