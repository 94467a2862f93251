#!/usr/bin/env python3
"""Builds the Optimum-exported tiny pipeline and diffusers' reference outputs for it.

Writes, relative to the repository root:
  models/tiny-sd-optimum/               the tiny SD pipeline of make_tiny_pipelines.py (same configs, same
                                        torch seed, built here with this venv's diffusers), saved with
                                        diffusers' save_pretrained and exported by Hugging Face Optimum's own
                                        exporter (optimum.exporters.onnx.main_export, task text-to-image), as
                                        users get it from `optimum-cli export onnx`;
  tests/references/tiny-sd-optimum/<scheduler>/
                                        diffusers' final latents and decoded uint8 image of the same torch
                                        pipeline, for the four schedulers of make_tiny_pipelines.py.

The tokenizer's vocab.json and merges.txt are the committed CLIP vocabulary of models/tiny-sd/tokenizer:
the export's copies are checked to hold the same tokens and merges, then stored as relative symlinks to it.
The VAE encoder is left out (dfast's text-to-image does not read it; it keeps the tracked tree smaller).
No SDXL counterpart: its ONNX files (about 5 MB) do not fit the fixture budget.

Needs its own venv with the pins of requirements-optimum.txt (optimum-onnx 0.1.0 wants optimum 2.1.x and
transformers < 4.58, hence huggingface_hub 0.36 and diffusers 0.35). Weights saved by transformers 5.x lose
their `text_model.` prefix when 4.57 loads them, so the pipeline is built in this venv, never loaded from
one that make_tiny_pipelines.py wrote.

  python -m venv /tmp/optimum-venv && /tmp/optimum-venv/bin/pip install -r experiment-scripts/requirements-optimum.txt
  /tmp/optimum-venv/bin/python experiment-scripts/make_optimum_fixture.py
"""

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx
import torch
from diffusers import PNDMScheduler

import common  # sibling modules (this script's folder is on sys.path)
import make_tiny_pipelines as tiny

NAME = "tiny-sd-optimum"
VOCAB = common.MODELS / "tiny-sd" / "tokenizer"  # the committed CLIP vocabulary


def optimum_export(pipe, dest: Path):
    """save_pretrained, then Optimum's exporter on that folder, as `optimum-cli export onnx --model DIR`."""
    from optimum.exporters.onnx import main_export
    from optimum.utils import logging as optimum_logging

    optimum_logging.set_verbosity_info()  # prints Optimum's own validation against torch

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "diffusers", Path(tmp) / "onnx"
        pipe.save_pretrained(src, safe_serialization=True)
        main_export(str(src), output=str(out), task="text-to-image", device="cpu", do_validation=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(out, dest, symlinks=True)
        # Optimum records the folder it read in `_name_or_path`: the temporary one, named after the weights.
        for path in dest.rglob("*.json"):
            text = path.read_text(encoding="utf-8")
            if str(src) in text:
                path.write_text(text.replace(str(src), "tiny-sd"), encoding="utf-8")
    shutil.rmtree(dest / "vae_encoder")


def share_vocabulary(dest: Path):
    """The export's vocab.json / merges.txt become relative symlinks to the committed ones, after checking
    that they hold the same vocabulary (the bytes differ only in JSON formatting)."""
    for tok in sorted(p for p in dest.iterdir() if p.name.startswith("tokenizer")):
        got_vocab = json.loads((tok / "vocab.json").read_text(encoding="utf-8"))
        want_vocab = json.loads((VOCAB / "vocab.json").read_text(encoding="utf-8"))
        assert got_vocab == want_vocab, f"{tok}/vocab.json differs from {VOCAB}/vocab.json"
        got_merges = (tok / "merges.txt").read_text(encoding="utf-8").split("\n")
        want_merges = (VOCAB / "merges.txt").read_text(encoding="utf-8").split("\n")
        assert merge_lines(got_merges) == merge_lines(want_merges), f"{tok}/merges.txt differs from {VOCAB}/merges.txt"
        for name in ("vocab.json", "merges.txt"):
            (tok / name).unlink()
            (tok / name).symlink_to(os.path.relpath(VOCAB.resolve() / name, tok))


def merge_lines(lines: list) -> list:
    """merges.txt's merges, without the `#version` header and empty lines."""
    return [m for m in lines if m and not m.startswith("#version")]


def describe(dest: Path):
    for path in sorted(dest.rglob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        inputs = [f"{i.name}:{onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)}"
                  f"[{','.join(d.dim_param or str(d.dim_value) for d in i.type.tensor_type.shape.dim)}]"
                  for i in model.graph.input]
        print(f"  {path.relative_to(dest)}: opset {opset}, {len(model.graph.node)} nodes, {', '.join(inputs)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=common.ROOT, help="repository root to write into")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dest = args.root / "models" / NAME
    refs = args.root / "tests" / "references"

    # The same configs and seed as tiny-sd; tiny.make_tokenizer checks the vocabulary against CLIP's real ids.
    sd = tiny.build_sd(VOCAB)
    print(f"exporting {dest} with Optimum ...")
    optimum_export(sd, dest)
    share_vocabulary(dest)
    describe(dest)

    # References from the same torch pipeline, with the scheduler and tokenizer as diffusers loads them from
    # the exported folder.
    sd.tokenizer = tiny.make_tokenizer(dest / "tokenizer", sd.tokenizer.pad_token)
    sd.scheduler = PNDMScheduler.from_pretrained(dest / "scheduler")
    print("reference runs ...")
    tiny.run_reference(sd, NAME, refs, sdxl=False, height=64, width=64, seed=0)
    print("done")


if __name__ == "__main__":
    main()
