#!/usr/bin/env bash
# mypy on upstream/ (the model core), as the package it is installed as: encodecmae_s3prl.upstream.
# The repository is an overlay (setup.py's SUBPACKAGE_ROOTS maps upstream/ -> encodecmae_s3prl.upstream, and so
# on) that mypy cannot see through the editable install's import hook, so this lays the package out under
# build/typecheck/ with symlinks, checks it with pyproject.toml's [tool.mypy] settings and reports repository
# paths (upstream/x.py). Usage: bash scripts/typecheck.sh   (make lint runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
PY=${PY:-$here/.venv/bin/python}
tree=build/typecheck
rm -rf "$tree"
mkdir -p "$tree/encodecmae_s3prl"
for item in encodecmae_s3prl/*; do
  [ "$(basename "$item")" = __pycache__ ] || ln -s "$here/$item" "$tree/$item"
done
# every subpackage setup.py maps from another folder (read from its SUBPACKAGE_ROOTS literal, not by running it)
"$PY" - "$here" "$tree" <<'EOF'
import ast, os, sys
here, tree = sys.argv[1], sys.argv[2]
module = ast.parse(open(os.path.join(here, "setup.py")).read())
roots = next(ast.literal_eval(node.value) for node in module.body if isinstance(node, ast.Assign)
             and any(getattr(t, "id", None) == "SUBPACKAGE_ROOTS" for t in node.targets))
for package, folder in roots.items():
    link = os.path.join(tree, *package.split("."))
    if package.count(".") == 1 and not os.path.lexists(link):
        os.symlink(os.path.join(here, folder), link)
EOF
set +e
(cd "$tree" && MYPYPATH=. "$PY" -m mypy --config-file "$here/pyproject.toml" --cache-dir "$here/build/mypy_cache" \
    -p encodecmae_s3prl.upstream) | sed -e 's#^encodecmae_s3prl/##'
status=${PIPESTATUS[0]}
exit "$status"
