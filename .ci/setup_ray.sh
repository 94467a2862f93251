#!/usr/bin/env bash
# Ray (pinned, with its Data and Serve extras) in the Python package's venv (python/.venv, which
# .ci/setup_python_package.sh makes and fills first), for the Ray scripts' tests (tests/ray). Reused while
# the pin holds.
set -euo pipefail
cd "$(dirname "$0")/.."
RAY_VERSION=2.60.0
VENV=python/.venv
if [ "$("$VENV/bin/python" -c 'import ray; print(ray.__version__)' 2>/dev/null)" != "$RAY_VERSION" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "ray[data,serve]==$RAY_VERSION"
fi
