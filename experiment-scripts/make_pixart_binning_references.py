"""Writes tests/references/pixart_binning.json: what diffusers' PixArt-α pipeline does with the requested size.

Run with the fixtures venv (diffusers 0.42.1, torch CPU):
    /tmp/fx/bin/python experiment-scripts/make_pixart_binning_references.py

Recorded:
- `tables`: ASPECT_RATIO_1024_BIN / 512 / 256 as diffusers defines them (key order kept: it breaks ties);
- `bins`: for (height, width) pairs and each sample size (128 / 64 / 32, the table PixArtAlphaPipeline picks),
  the bin `PixArtImageProcessor.classify_height_width_bin` returns. The sizes are a grid of multiples of 8 plus
  sizes whose aspect ratio falls exactly between two table keys (ties);
- `resize_and_crop`: `PixArtImageProcessor.resize_and_crop_tensor` (torch bilinear, align_corners=False, then
  a center crop) on small seeded float32 images, input and output.
"""

import itertools
import json

import numpy as np
import torch
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)

import common  # a sibling module (this script's folder is on sys.path)

OUT = common.ROOT / "tests" / "references" / "pixart_binning.json"
TABLES = {128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}

def bins():
    sizes = set()
    for h in range(8, 2049, 136):
        for w in range(8, 2049, 152):
            sizes.add((h, w))
    # Aspect ratios midway between neighbouring keys: ties go to the first key in table order.
    keys = [float(k) for k in ASPECT_RATIO_1024_BIN]
    for a, b in itertools.pairwise(keys):
        mid = (a + b) / 2
        for w in (200, 400, 800, 1000):
            h = round(mid * w)
            if h % 8 == 0 and h > 0:
                sizes.add((h, w))
    sizes |= {(1024, 1024), (512, 512), (256, 256), (768, 1360), (1360, 768), (600, 800), (64, 64), (64, 96)}
    rows = []
    for h, w in sorted(sizes):
        for sample_size, table in TABLES.items():
            bh, bw = PixArtImageProcessor.classify_height_width_bin(h, w, ratios=table)
            rows.append([h, w, sample_size, bh, bw])
    return rows


def f32_list(t):
    """float32 values, each written with the fewest digits that read back to the same float32."""
    return [float(str(np.float32(v))) for v in t.flatten().numpy()]


def resize_and_crop():
    cases = []
    # (input height, width) -> (new height, width): up, down, both crops, identity.
    for i, ((ih, iw), (nh, nw)) in enumerate(
        [((8, 12), (10, 10)), ((16, 16), (12, 20)), ((12, 8), (7, 5)), ((9, 14), (9, 14)), ((10, 6), (25, 13))]
    ):
        gen = torch.Generator("cpu").manual_seed(100 + i)
        x = torch.rand((1, 3, ih, iw), generator=gen, dtype=torch.float32) * 2 - 1
        y = PixArtImageProcessor.resize_and_crop_tensor(x.clone(), nw, nh)
        cases.append(
            {
                "input_shape": list(x.shape),
                "input": f32_list(x),
                "new_height": nh,
                "new_width": nw,
                "output_shape": list(y.shape),
                "output": f32_list(y),
            }
        )
    return cases


def main():
    out = {
        "tables": {str(s): [[k, int(v[0]), int(v[1])] for k, v in t.items()] for s, t in TABLES.items()},
        "bins": bins(),
        "resize_and_crop": resize_and_crop(),
    }
    OUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(out['bins'])} bins)")


if __name__ == "__main__":
    main()
