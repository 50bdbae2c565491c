#!/usr/bin/env bash
# .suites/: X-ARES and MTEB (requirements-suites.lock) for scripts and tests that run them, layered on .venv with
# PYTHONPATH=.suites (their transformers 5 / huggingface_hub 2 would break s3prl's runner inside .venv).
# Idempotent: a second run only checks. Usage: bash scripts/setup_suites.sh   (after scripts/setup_venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.suites/.installed-$(sha1sum requirements-suites.lock | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi
if [ ! -x .venv/bin/python ]; then
  echo "error: .venv is missing; run 'bash scripts/setup_venv.sh' (or make setup) first" >&2
  exit 1
fi
rm -rf .suites.tmp
.venv/bin/python -m pip install -q --no-deps --target .suites.tmp -r requirements-suites.lock
rm -rf .suites && mv .suites.tmp .suites  # whole or not at all
touch "$stamp"
echo "ready: .suites (X-ARES $(grep -o 'xares==[0-9.]*' requirements-suites.lock), MTEB $(grep -o 'mteb==[0-9.]*' requirements-suites.lock))"
