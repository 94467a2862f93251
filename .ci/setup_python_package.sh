#!/usr/bin/env bash
# The Python package's test venv (python/.venv, git-ignored, reused while its pins hold): numpy, Pillow,
# pytest, ONNX Runtime's CPU build (the `onnxruntime` package, whose library dfast loads) and maturin, all
# pinned; then the package itself, built from python/ and installed as `pip install ./python` does.
# The build uses cargo's dev profile (DFAST_PY_PROFILE, default dev): it reuses what `cargo test` compiled,
# where a release build (pip's default) compiles every dependency again. Needs `python3 -m venv`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=python/.venv
PINS=(numpy==2.4.6 pillow==12.3.0 pytest==9.0.3 onnxruntime==1.31.1 maturin==1.16.0)
if [ "$(cat "$VENV/pins.txt" 2>/dev/null)" != "${PINS[*]}" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" >"$VENV/pins.txt"
fi
PATH="$PWD/$VENV/bin:$PATH" MATURIN_PEP517_ARGS="--profile ${DFAST_PY_PROFILE:-dev}" "$VENV/bin/python" -m pip install --quiet \
  --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall ./python
