#!/usr/bin/env bash
# Fills .bench-tools/ (ignored by git) with what bench/gpu_device.sh carries to the GPU machine:
#   wheels/   the pure-Python wheels its image lacks (diffusers, at the version of .venv)
#   CatVTON/  the files of the upstream reference that bench/reference.py imports
# Usage: bash bench/gpu_tools.sh REFERENCE
#   REFERENCE: a checkout of Zheng-Chong/CatVTON, or its git directory (a bare mirror will do)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS=.bench-tools
PIP=${PIP:-.venv/bin/pip}
PYTHON=${PYTHON:-.venv/bin/python}
DEVICE_PYTHON=3.12  # the lent GPU machine's python3 (see the device notes of the tool library)
# The reference pipeline's own imports: model/pipeline.py pulls in the other three.
REFERENCE_FILES=(model/pipeline.py model/attn_processor.py model/utils.py utils.py LICENSE)

die() { echo "gpu_tools: $*" >&2; exit 1; }

check_ignored() {
  git check-ignore -q "$TOOLS/x" \
    || die "$TOOLS/ is not ignored by git: add '/$TOOLS/' to .git/info/exclude so it never gets committed"
}

download_wheels() {
  local version
  version=$("$PYTHON" -c 'import diffusers; print(diffusers.__version__)') \
    || die "no diffusers in $PYTHON: run ./dev test once to make .venv"
  rm -rf "$TOOLS/wheels"
  mkdir -p "$TOOLS/wheels"
  echo "gpu_tools: downloading diffusers==$version for Python $DEVICE_PYTHON" >&2
  "$PIP" download --quiet --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" \
    -d "$TOOLS/wheels" "diffusers==$version"
}

copy_reference() {
  local source=$1 target="$PWD/$TOOLS/CatVTON"
  rm -rf "$target"
  mkdir -p "$target"
  if [ -f "$source/model/pipeline.py" ]; then
    (cd "$source" && cp --parents "${REFERENCE_FILES[@]}" "$target/")
  elif git --git-dir="$source" rev-parse --verify -q HEAD >/dev/null; then
    git --git-dir="$source" archive HEAD "${REFERENCE_FILES[@]}" | tar -x -C "$target"
    git --git-dir="$source" rev-parse HEAD >"$target/COMMIT"
  else
    die "$source is neither a CatVTON checkout (model/pipeline.py) nor its git directory"
  fi
  echo "gpu_tools: reference files copied to $target" >&2
}

[ $# -eq 1 ] || die "usage: bash bench/gpu_tools.sh PATH/TO/CatVTON (a checkout or its git directory)"
check_ignored
download_wheels
copy_reference "$1"
du -sh "$TOOLS" >&2
find "$TOOLS" -type f | sort >&2
