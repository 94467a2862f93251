#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from PyPI and puts it under .ort/<flavour>/ of this checkout,
# where dfast looks for it (after --ort-lib and ORT_DYLIB_PATH).
#
#   experiment-scripts/setup_ort.sh [cpu]
#
# Needs python3 with pip and access to PyPI. Safe to run again: an existing library is kept.
set -euo pipefail
flavour=${1:-cpu}
root="$(cd "$(dirname "$0")/.." && pwd)"
case "$flavour" in
  cpu) pkg=onnxruntime; ver=${ORT_VERSION:-1.31.1} ;;
  *) echo "setup_ort.sh: unknown flavour '$flavour' (expected: cpu)" >&2; exit 2 ;;
esac
dest="$root/.ort/$flavour"
lib="libonnxruntime.so.$ver"
if [ -f "$dest/$lib" ]; then
  echo "ONNX Runtime $ver ($flavour) already in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading $pkg==$ver from PyPI ..."
python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$pkg==$ver"
wheel=$(ls "$tmp"/*.whl)
mkdir -p "$dest"
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
[ -f "$dest/$lib" ] || { echo "setup_ort.sh: $lib not found in $(basename "$wheel")" >&2; exit 1; }
echo "ONNX Runtime $ver ($flavour) installed in $dest"
