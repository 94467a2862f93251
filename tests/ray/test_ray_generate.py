"""ray_generate.py on the two-node cluster: 8 prompts over 2 actors, checked pixel for pixel against
`dfast generate --prompt-file` with the same file and flags; an actor killed while it generates; a rerun that
skips; failing lines named by number."""

import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, dfast_binary, node_ids
from PIL import Image

# Plain lines, a comment, an empty line and JSON lines with their own seed, steps and size: the seed rule
# (prompt i gets --seed + i, a line's seed wins) and the flags-fill-the-rest rule are both exercised.
PROMPTS = """\
# eight prompts
a red fox in the snow
a lighthouse at dusk
{"prompt": "a bowl of ramen", "seed": 1234}

a paper boat on a pond
{"prompt": "an old map", "steps": 3, "negative_prompt": "blurry"}
{"prompt": "a steam train", "width": 128}
a glass of water
a cat asleep on a chair
"""
# Enough work per image (1.5 s on one core here) that an actor is caught in the middle of one.
FLAGS = ["--seed", "7", "--steps", "30", "--width", "256", "--height", "256", "--guidance", "7.5"]
TIME_LIMIT = 300


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompts")
    path = folder / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="module")
def reference(prompts, tmp_path_factory):
    """The images `dfast generate --prompt-file` makes: ref-0.png ... ref-7.png."""
    out = tmp_path_factory.mktemp("reference")
    cmd = [dfast_binary(), "generate", "--model", "models/tiny-sd", "--prompt-file", str(prompts),
           "--out", str(out / "ref.png"), *FLAGS]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=TIME_LIMIT)
    images = sorted(out.glob("ref-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    assert len(images) == 8
    return images


def pixels(path):
    with Image.open(path) as image:
        image.load()  # a half-written PNG fails here
        return np.asarray(image.convert("RGB"))


def assert_same_images(out, reference):
    names = sorted(p.name for p in Path(out).iterdir())
    assert names == [f"{i:05d}.png" for i in range(8)], f"expected 8 finished images and nothing else: {names}"
    for i, ref in enumerate(reference):
        got, want = pixels(Path(out) / f"{i:05d}.png"), pixels(ref)
        assert got.shape == want.shape, f"image {i}: {got.shape} != {want.shape}"
        assert np.array_equal(got, want), f"image {i}: {np.count_nonzero(got != want)} values differ"


def text_chunks(path):
    with Image.open(path) as image:
        return dict(image.text)


def test_batch_matches_generate_and_uses_both_nodes(cluster, script, prompts, reference, tmp_path):
    out = tmp_path / "images"
    run = script("ray_generate.py", "--address", cluster.address, "--model", "models/tiny-sd",
                 "--prompt-file", prompts, "--out", out, "--actors", "2", *FLAGS, timeout=TIME_LIMIT)
    assert run.finish() == 0, run.text()
    assert_same_images(out, reference)
    meta = [text_chunks(out / f"{i:05d}.png") for i in range(8)]
    assert [m["seed"] for m in meta] == ["7", "8", "1234", "10", "11", "12", "13", "14"]
    assert meta[4]["steps"] == "3" and meta[4]["negative_prompt"] == "blurry" and meta[2]["prompt_file_line"] == "4"
    # Two actors, one on each node (each node has one CPU and each actor reserves one).
    assert {m["node_id"] for m in meta} == set(node_ids(cluster).values())

    # A rerun finds every image written and generates nothing.
    again = script("ray_generate.py", "--address", cluster.address, "--model", "models/tiny-sd",
                   "--prompt-file", prompts, "--out", out, "--actors", "2", *FLAGS, timeout=TIME_LIMIT)
    assert again.finish() == 0, again.text()
    assert "0 to generate, 8 already written" in again.text()
    assert_same_images(out, reference)


def test_an_actor_killed_while_generating(cluster, script, prompts, reference, tmp_path):
    out = tmp_path / "images"
    run = script("ray_generate.py", "--address", cluster.address, "--model", "models/tiny-sd",
                 "--prompt-file", prompts, "--out", out, "--actors", "2", *FLAGS, timeout=TIME_LIMIT)
    started = re.compile(r"line (\d+): started prompt (\d+) in pid (\d+)")
    # From the second prompt started on (both actors are up by then), the first whose image is not written yet:
    # its actor is busy generating it.
    at, _ = run.wait_for(started.search)
    while True:
        at, line = run.wait_for(started.search, at + 1)
        prompt_line, index, pid = (int(g) for g in started.search(line).groups())
        image = out / f"{index:05d}.png"
        if not image.exists():
            break
    os.kill(pid, signal.SIGKILL)
    print(f"killed pid {pid} while it generated line {prompt_line} (prompt {index}, not written yet)")
    # Ray restarts the actor and Ray Data runs its prompt again, in another process.
    run.wait_for(lambda s: f"line {prompt_line}: started prompt {index} in pid" in s and f"pid {pid}" not in s, at + 1)
    assert run.finish() == 0, run.text()
    # The killed process started the prompt and never finished it: it was busy when it was killed.
    wrote = re.compile(rf"line {prompt_line}: wrote .* in pid {pid}$")
    assert not any(wrote.search(s) for s in run.lines), run.text()
    assert_same_images(out, reference)


def test_failing_lines_are_named_and_the_others_written(cluster, script, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red fox\n{"prompt": "too wide", "width": 100}\n{"prompt": "x", "sed": 1}\na boat\n')
    out = tmp_path / "images"
    run = script("ray_generate.py", "--address", cluster.address, "--model", "models/tiny-sd",
                 "--prompt-file", prompts, "--out", out, "--actors", "1", "--seed", "0", "--steps", "2",
                 timeout=TIME_LIMIT)
    assert run.finish() == 1, run.text()
    text = run.text()
    assert f"error: {prompts} line 2: " in text and "width" in text
    assert f"error: {prompts} line 3: not a prompt object: unknown field `sed`" in text
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00003.png"]
    assert text_chunks(out / "00003.png")["seed"] == "3"
