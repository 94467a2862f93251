#!/usr/bin/env python3
"""Each component of a dfast-converted PixArt folder against the unconverted export, on the same inputs.

  python benchmarks/pixart-cpu/check_converted.py SOURCE CONVERTED [--components text_encoder,transformer,...]

The comparison of tests/convert.rs at PixArt's real shapes: batch 1, 120 tokens (20 of them unmasked), the
transformer at its 64x64 latent (sample_size 64), the VAE decoder at a 16x16 latent (fully convolutional: a
smaller input keeps the check short), timestep 500, inputs drawn from a fixed seed. ONNX Runtime's CPU EP;
the two sessions of a component are loaded one after the other, never both at once. Prints one line per
component and output: relative L2 of the converted output against the source's."""

import argparse
import gc
import json
import resource
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

SHAPES = {
    "input_ids": (1, 120), "attention_mask": (1, 120), "encoder_attention_mask": (1, 120),
    "hidden_states": (1, 4, 64, 64), "encoder_hidden_states": (1, 120, 4096), "timestep": (1,),
    "latent_sample": (1, 4, 16, 16),
}


def inputs(session):
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        shape = SHAPES.get(spec.name)
        if shape is None:
            raise SystemExit(f"no test shape for input {spec.name} {spec.shape}")
        if spec.name in ("attention_mask", "encoder_attention_mask"):
            value = np.zeros(shape)
            value[:, :20] = 1
        elif spec.name == "input_ids":
            value = rng.integers(3, 32000, shape) * (np.arange(120) < 20)
        elif spec.name == "timestep":
            value = np.full(shape, 500.0)
        else:
            value = rng.standard_normal(shape)
        dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(float16)": np.float16}[spec.type]
        feeds[spec.name] = value.astype(dtype)
    return feeds


def run(path: Path):
    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = inputs(session)
    t = time.time()
    out = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    del session
    gc.collect()
    return dict(zip(names, (o.astype(np.float32) for o in out))), time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("converted", type=Path)
    ap.add_argument("--components", default="text_encoder,transformer,vae_decoder")
    ap.add_argument("--cache", type=Path, help="a folder keeping the source's outputs between calls (one per source)")
    args = ap.parse_args()
    manifest = json.loads((args.converted / "dfast-manifest.json").read_text())
    results = {}
    for name in args.components.split(","):
        cached = args.cache / f"{name}.npz" if args.cache else None
        if cached and cached.exists():
            want, t_want = dict(np.load(cached)), 0.0
        else:
            want, t_want = run(args.source / name / "model.onnx")
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, **want)
        got, t_got = run(args.converted / name / "model.onnx")
        for output, w in want.items():
            err = float(np.linalg.norm(got[output] - w) / np.linalg.norm(w))
            results[f"{name}/{output}"] = err
            print(f"{manifest.get('profile')} {name}/{output}: relative L2 {err:.2e} "
                  f"(source {t_want:.1f} s, converted {t_got:.1f} s)", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS of this check: {peak:.1f} GB")


if __name__ == "__main__":
    main()
