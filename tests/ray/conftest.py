"""One two-node Ray cluster on 127.0.0.1 for the whole session (each node with its own custom resource,
`node_a` and `node_b`, one logical CPU each, a capped object store), shut down at the end; the scripts
under test join it as drivers of their own (`--address`)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "experiment-scripts"
OBJECT_STORE = 100 * 1024 * 1024


@pytest.fixture(scope="session")
def cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    node = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": OBJECT_STORE}
    start = time.monotonic()
    c = Cluster(initialize_head=True, head_node_args={**node, "resources": {"node_a": 1}, "include_dashboard": False})
    try:
        second = c.add_node(**node, resources={"node_b": 1})
        c.wait_for_nodes(timeout=120)
        c.ids = {"node_a": c.head_node.node_id, "node_b": second.node_id}
        print(f"two-node cluster up in {time.monotonic() - start:.1f} s at {c.address}")
        yield c
    finally:
        c.shutdown()


def node_ids(cluster):
    """{custom resource: node id} of the cluster's two nodes."""
    return cluster.ids


def dfast_binary():
    """The CLI the images are checked against (built by `cargo build` or `cargo test`)."""
    path = Path(os.environ.get("DFAST_BIN", ROOT / "target" / "debug" / "dfast"))
    assert path.is_file(), f"{path}: the dfast binary is missing; run `cargo build` first (or set DFAST_BIN)"
    return str(path)


class Script:
    """A script run as its own process (its own Ray driver), its output read line by line as it comes, so that
    a test can act on what it says; stopped (its process group) when the test ends."""

    def __init__(self, name, *args, timeout=300, env=None):
        self.lines = []
        self.cond = threading.Condition()
        self.deadline = time.monotonic() + timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(SCRIPTS / name), *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})},
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            sys.stdout.write(line)
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, predicate, start=0):
        """The first line from index `start` on that satisfies `predicate`, and its index; fails at the deadline."""
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    if predicate(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                if self.proc.poll() is not None and not self.reader.is_alive():
                    pytest.fail("the script ended before saying what the test waits for:\n" + self.text())
                left = self.deadline - time.monotonic()
                if left <= 0:
                    pytest.fail("timed out waiting for the script:\n" + self.text())
                self.cond.wait(min(left, 1.0))

    def finish(self):
        """Its exit status, once it ends (killed at the deadline)."""
        try:
            rc = self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail("the script ran past its time limit:\n" + self.text())
        self.reader.join(timeout=10)
        return rc

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def script():
    """Starts scripts; whatever is still running when the test ends is stopped."""
    started = []

    def start(name, *args, **kwargs):
        s = Script(name, *args, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
