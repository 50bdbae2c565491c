#!/usr/bin/env bash
# mypy on upstream/ (the model core), as the package it is installed as: encodecmae_s3prl.upstream.
# The repository is an overlay (encodecmae_s3prl/package_layout.py maps upstream/ -> encodecmae_s3prl.upstream, and
# so on) that mypy cannot see through the editable install's import hook, so this lays the package out under
# build/typecheck/ with symlinks, checks it with pyproject.toml's [tool.mypy] settings and reports repository
# paths (upstream/x.py). Usage: bash scripts/typecheck.sh   (make lint runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
PY=${PY:-$here/.venv/bin/python}
tree=build/typecheck
rm -rf "$tree"
"$PY" encodecmae_s3prl/package_layout.py "$tree"  # symlinks to this checkout's folders, as installed
set +e
(cd "$tree" && MYPYPATH=. "$PY" -m mypy --config-file "$here/pyproject.toml" --cache-dir "$here/build/mypy_cache" \
    -p encodecmae_s3prl.upstream) | sed -e 's#^encodecmae_s3prl/##'
status=${PIPESTATUS[0]}
exit "$status"
