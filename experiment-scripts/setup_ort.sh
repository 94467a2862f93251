#!/usr/bin/env bash
# Fetches ONNX Runtime's shared libraries from PyPI and puts them under .ort/<flavour>/ of this checkout,
# where dfast looks for them (after --ort-lib and ORT_DYLIB_PATH). The flavour follows the execution
# provider: `cpu` for --ep cpu, `gpu` for --ep cuda and --ep tensorrt, `openvino` for --ep openvino.
#
#   experiment-scripts/setup_ort.sh [cpu|gpu|openvino]...      (default cpu; several flavours in one call)
#
#   cpu       onnxruntime 1.31.1                  libonnxruntime.so.1.31.1 (CPU EP)
#   gpu       onnxruntime-gpu 1.31.1              + libonnxruntime_providers_{cuda,tensorrt,shared}.so; the CUDA 13
#                                                 and cuDNN 9 libraries must be on LD_LIBRARY_PATH (PyPI nvidia-*
#                                                 packages or the system); TensorRT for --ep tensorrt
#   openvino  onnxruntime-openvino 1.24.1         ONNX Runtime 1.24.1 with the OpenVINO EP built in, plus the
#                                                 OpenVINO libraries it needs (dfast loads them from this folder)
#
# Needs python3 with pip and access to PyPI. Safe to run again: an existing library is kept.
set -euo pipefail
if [ $# -gt 1 ]; then
  for f in "$@"; do "$0" "$f"; done
  exit 0
fi
flavour=${1:-cpu}
root="$(cd "$(dirname "$0")/.." && pwd)"
case "$flavour" in
  cpu) pkg=onnxruntime; ver=${ORT_VERSION:-1.31.1} ;;
  gpu) pkg=onnxruntime-gpu; ver=${ORT_VERSION:-1.31.1} ;;
  openvino) pkg=onnxruntime-openvino; ver=${ORT_OPENVINO_VERSION:-1.24.1} ;;
  *) echo "setup_ort.sh: unknown flavour '$flavour' (expected: cpu, gpu or openvino)" >&2; exit 2 ;;
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
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$tmp" "$pkg==$ver"
wheel=$(ls "$tmp"/*.whl)
mkdir -p "$dest.partial"
# Every shared library in the wheel's capi folder: ONNX Runtime, its providers, and (openvino) OpenVINO's
# own libraries and plugins, which the provider finds next to it.
python3 - "$wheel" "$dest.partial" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and ".so" in base and not base.startswith("onnxruntime_pybind"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
[ -f "$dest.partial/$lib" ] || { echo "setup_ort.sh: $lib not found in $(basename "$wheel")" >&2; exit 1; }
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "ONNX Runtime $ver ($flavour) installed in $dest: $(ls "$dest" | paste -sd' ')"
