#!/usr/bin/env bash
# The Python the checks need, in a venv of their own (.ci/.venv, git-ignored, reused while its pins hold):
# ruff (pinned; ruff.toml says which files and rules) for .ci/run's lint, and huggingface_hub (pinned), the
# Python client tests/hub.rs checks its test Hub and the shared cache against. Needs `python3 -m venv`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF_VERSION=0.17.5
HF_HUB_VERSION=2.4.0
if [ "$(.ci/.venv/bin/ruff --version 2>/dev/null)" != "ruff $RUFF_VERSION" ] ||
  [ "$(.ci/.venv/bin/python -c 'import huggingface_hub; print(huggingface_hub.__version__)' 2>/dev/null)" != "$HF_HUB_VERSION" ]; then
  rm -rf .ci/.venv
  python3 -m venv .ci/.venv
  .ci/.venv/bin/python -m pip install --quiet --disable-pip-version-check "ruff==$RUFF_VERSION" \
    "huggingface-hub==$HF_HUB_VERSION"
fi
