# make test : create .venv with the pinned stack if needed, then run the test suite.
# make demo : the offline end-to-end demo (pretrain tiny EnCodecMAE, probe, compare).
PY := .venv/bin/python

.PHONY: setup test demo bench

setup:
	bash scripts/setup_venv.sh

test: setup
	$(PY) -m pytest tests -q

demo: setup
	$(PY) -m encodecmae_s3prl.demo

bench: setup
	$(PY) benchmarks/limits.py
	$(PY) benchmarks/extraction_rtf.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/data_pipeline.py
