"""ray_serve.py under `serve run` on the two-node cluster: 16 concurrent requests from a bounded client loop
on 127.0.0.1, all answered with valid PNGs (p50 and p95 printed); bad JSON gets a 400 with its sentence."""

import io
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import ROOT, SCRIPTS
from PIL import Image

REQUESTS = 16
REQUEST_TIMEOUT = 120
# `serve` (the CLI next to this interpreter) joins the cluster on 127.0.0.1 in Ray's single-machine mode:
# otherwise Ray rewrites the loopback address into the machine's outward one.
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    """(status, content type, body, seconds) of one POST."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
            status, kind, data = answer.status, answer.headers.get("Content-Type"), answer.read()
    except urllib.error.HTTPError as e:
        status, kind, data = e.code, e.headers.get("Content-Type"), e.read()
    return status, kind, data, time.perf_counter() - start


def test_serve_run_answers_concurrent_requests(cluster, script):
    import os

    port = free_port()
    serve = str(Path(sys.executable).with_name("serve"))
    env = {**os.environ, **ENV}
    # Serve's cluster-wide HTTP options: one proxy, on the head node (both nodes share 127.0.0.1).
    subprocess.run([serve, "start", "-a", cluster.address, "--http-host", "127.0.0.1", "--http-port", str(port),
                    "--proxy-location", "HeadOnly"], cwd=ROOT, env=env, check=True, timeout=180)
    run = subprocess.Popen([serve, "run", "-a", cluster.address, "--app-dir", str(SCRIPTS), "ray_serve:app",
                            "model=models/tiny-sd", "replicas=2"], cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/generate"
    try:
        deadline = time.monotonic() + 240
        while True:  # ready when a request is answered
            assert run.poll() is None, "serve run ended early"
            try:
                status, _, _, _ = post(url, b'{"prompt": "warm up", "steps": 1}')
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the deployment did not answer within 240 s"
            time.sleep(2)

        bodies = [json.dumps({"prompt": f"prompt {i}", "seed": i, "steps": 4, "size": [64, 64]}).encode()
                  for i in range(REQUESTS)]
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            answers = list(pool.map(lambda body: post(url, body), bodies))
        wall = time.perf_counter() - start
        for status, kind, data, _ in answers:
            assert status == 200 and kind == "image/png", (status, kind, data[:200])
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                assert image.size == (64, 64)
        seconds = sorted(a[3] for a in answers)
        p50 = statistics.median(seconds)
        p95 = statistics.quantiles(seconds, n=20, method="inclusive")[-1]
        print(f"{REQUESTS} concurrent requests, 2 replicas: p50 {p50:.2f} s, p95 {p95:.2f} s, "
              f"all answered in {wall:.2f} s")
        # Different seeds, different pictures: each answer is its own request's.
        assert len({a[2] for a in answers}) == REQUESTS

        status, kind, data, _ = post(url, b'{"prompt": "a fox",')
        assert status == 400 and data.decode().startswith("the body is not JSON"), (status, data)
        status, _, data, _ = post(url, b'{"prompt": "a fox", "steps": 0}')
        assert (status, data.decode()) == (400, "`steps` must be a positive whole number, found 0\n")
        status, _, data, _ = post(url, b'{"prompt": "a fox", "size": [100, 64]}')
        assert status == 400 and "100" in data.decode(), (status, data)
    finally:
        run.send_signal(2)  # SIGINT: serve run deletes the application and shuts Serve down
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
