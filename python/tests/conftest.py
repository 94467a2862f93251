"""Shared fixtures: the checkout's tiny pipelines and the `dfast` binary that `cargo build` (or `cargo test`)
made, which the package is compared with."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_SD = ROOT / "models" / "tiny-sd"


@pytest.fixture(scope="session")
def dfast_bin() -> Path:
    path = Path(os.environ.get("DFAST_BIN", ROOT / "target" / "debug" / "dfast"))
    assert path.is_file(), f"{path}: the dfast binary is missing; run `cargo build` first (or set DFAST_BIN)"
    return path


@pytest.fixture(scope="session")
def cli(dfast_bin):
    """Runs `dfast ARGS...`; returns the completed process (stdout, stderr, returncode)."""

    def run(*args, ok=True):
        env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
        done = subprocess.run([str(dfast_bin), *map(str, args)], check=False, capture_output=True, text=True, env=env)
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    return run


@pytest.fixture(scope="session")
def tiny_sd():
    import dfast

    return dfast.Pipeline(TINY_SD)
