#!/usr/bin/env bash
# Create .venv/ with the pinned stack and install this package in editable mode.
# Idempotent: a second run only checks. Usage: bash scripts/setup_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

apt_install() {  # as root with apt only; quiet; refreshes the package lists once if needed
  apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$@" >/dev/null 2>&1; }
}
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

# Optional: spoken words (espeak-ng + sox) for the demo's speech probe; tones are used without them.
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
  can_apt && apt_install espeak-ng sox || echo "note: espeak-ng/sox not installed; synthetic tones replace spoken words."
fi
# Required: fairseq2's native extension needs the system libsndfile.
if ! ldconfig -p 2>/dev/null | grep -q libsndfile.so.1; then
  if can_apt; then
    apt_install libsndfile1 || { echo "error: 'apt-get install libsndfile1' failed; install it and rerun." >&2; exit 1; }
  else
    echo "error: the system library libsndfile1 is missing (fairseq2 needs it)." >&2
    echo "       install it with your package manager, e.g. 'sudo apt-get install libsndfile1', then rerun." >&2
    exit 1
  fi
fi

# setup.py maps every downstream_probes/<probe>/ folder: a new probe needs the editable install again
stamp=.venv/.installed-$( (cat requirements.lock setup.py encodecmae_s3prl/package_layout.py; ls -d downstream_probes/*/) \
    | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi
if [ ! -x .venv/bin/python ]; then
  # the pinned torch (CUDA build) alone is ~7 GB: say so up front, not as pip's OSError halfway through
  free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "${free_kib:-0}" -lt $((10 * 1024 * 1024)) ]; then
    echo "error: $(pwd) has $((free_kib / 1024 / 1024)) GiB free; .venv needs ~8 GiB and the tests ~3 GiB under" \
         "${TMPDIR:-/tmp}. Free some disk (old clones, /tmp/pytest-of-$(id -un)) and rerun." >&2
    exit 1
  fi
  "$PY" -m venv .venv
fi
# catalyst 22.4 (s3prl's speech_commands) has metadata that pip >= 24.1 refuses.
.venv/bin/python -m pip install -q "pip==24.0"
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
rm -f .venv/.installed-*
touch "$stamp"
echo "ready: .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
