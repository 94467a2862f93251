#!/usr/bin/env python3
"""Batch generation on Ray: the prompts of a prompt file over a pool of actors, each holding one
`dfast.Pipeline`, with Ray Data feeding them.

    python experiment-scripts/ray_generate.py --model models/tiny-sd --prompt-file prompts.txt --out images \\
        --actors 2 --steps 20 --seed 0 [--address HOST:PORT]

The prompt file is `dfast generate --prompt-file`'s: one prompt per line, or one JSON object per line
(`prompt`, `negative_prompt`, `seed`, `width`, `height`, `steps`); the flags fill what a line leaves out, and
prompt i (from 0) is seeded --seed + i unless its line sets a seed, so each image is the one `generate` makes.
Prompt i is written to OUT/i.png (five digits), with how it was made in PNG text chunks, through a temporary
file and a rename; a rerun skips the images already there (without --seed the seed is random, and printed:
give it to a rerun so that the images still missing get the seeds they would have had). A prompt that fails
is named by its line and the others are still written; the exit status is then 1. An actor that dies is
restarted by Ray and its prompt run again.
"""

import argparse
import io
import json
import os
import random
import sys
import time
from pathlib import Path

import ray_common
from ray_common import BadInput, PromptJob, positive_int, seed_int


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline folder (on every node) or Hugging Face repo id")
    p.add_argument("--prompt-file", required=True, type=Path, help="prompts, as `dfast generate --prompt-file`")
    p.add_argument("--out", required=True, type=Path, help="output folder (created): 00000.png, 00001.png, ...")
    p.add_argument("--actors", type=positive_int, default=1, help="actors, each holding one pipeline (default 1)")
    p.add_argument("--actor-cpus", type=float, default=1.0,
                   help="CPU cores each actor reserves on its node (default 1)")
    p.add_argument("--actor-resources", type=json.loads, default=None, metavar="JSON",
                   help='custom resources each actor needs, e.g. \'{"xeon": 1}\'')
    p.add_argument("--ep", default="cpu", help="execution provider (default cpu)")
    p.add_argument("--ep-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an execution provider option, as generate's (repeatable)")
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: the model's, as generate)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=seed_int, help="seed of prompt 0; prompt i gets seed + i (default: random)")
    p.add_argument("--width", type=positive_int, help="image width (default: the model's)")
    p.add_argument("--height", type=positive_int, help="image height (default: the model's)")
    p.add_argument("--negative-prompt", help="what to steer away from (default empty)")
    ray_common.add_ray_flags(p)
    args = p.parse_args(argv)
    if args.actor_resources is not None and not isinstance(args.actor_resources, dict):
        p.error("--actor-resources: expected a JSON object of resource names and amounts")
    if any("=" not in o for o in args.ep_option):
        p.error("--ep-option: expected KEY=VALUE, e.g. threads=2")
    args.ep_options = dict(o.split("=", 1) for o in args.ep_option)
    return args


def image_name(index):
    return f"{index:05d}.png"


def job_settings(job: PromptJob, args, base_seed):
    """What prompt `job` is generated with: its line's settings over the flags, its seed by generate's rule."""
    s = job.settings
    return {
        "index": job.index,
        "line": job.line,
        "prompt": job.prompt,
        "negative_prompt": s.get("negative_prompt", args.negative_prompt),
        "seed": s["seed"] if "seed" in s else (base_seed + job.index) % 2**64,
        "steps": s.get("steps", args.steps),
        "width": s.get("width", args.width),
        "height": s.get("height", args.height),
        "guidance": args.guidance,
    }


class Generator:
    """One actor of the pool: loads the pipeline once, then generates and writes one image per row."""

    def __init__(self, model, ep, ep_options, out):
        import dfast
        import ray

        self.pipe = dfast.Pipeline(model, ep=ep, ep_options=ep_options)
        self.model, self.ep, self.out = model, ep, Path(out)
        self.version = getattr(dfast, "__version__", "")
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch):
        import numpy as np

        results = [json.dumps(self.one(json.loads(text))) for text in batch["job"]]
        return {"result": np.array(results, dtype=object)}

    def one(self, job):
        print(f"line {job['line']}: started prompt {job['index']} in pid {os.getpid()}", flush=True)
        start = time.perf_counter()
        try:
            result = self.pipe(
                job["prompt"],
                negative_prompt=job["negative_prompt"],
                num_inference_steps=job["steps"],
                guidance_scale=job["guidance"],
                seed=job["seed"],
                width=job["width"],
                height=job["height"],
            )
            png = self.encode(result.images[0], result.config, job)
        except Exception as e:  # noqa: BLE001 -- one prompt's failure is reported with its line; the batch goes on
            return {"index": job["index"], "line": job["line"], "error": str(e)}
        path = self.out / image_name(job["index"])
        ray_common.write_atomic(path, png)
        seconds = time.perf_counter() - start
        print(f"line {job['line']}: wrote {path.name} in {seconds:.2f} s in pid {os.getpid()}", flush=True)
        return {"index": job["index"], "line": job["line"], "path": str(path), "seconds": seconds}

    def encode(self, image, config, job):
        """PNG bytes, with how the image was made in text chunks (the keys `dfast generate` writes, and the
        prompt file's line and the Ray node)."""
        from PIL import Image, PngImagePlugin

        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        info = PngImagePlugin.PngInfo()
        pairs = {
            "prompt": job["prompt"],
            "negative_prompt": job["negative_prompt"] or "",
            "seed": job["seed"],
            "image_index": 0,
            "steps": config.get("steps", ""),
            "scheduler": config.get("scheduler", ""),
            "guidance": config.get("guidance", ""),
            "size": f"{image.width}x{image.height}",
            "model": self.model,
            "ep": self.ep,
            "prompt_file_line": job["line"],
            "node_id": self.node_id,
            "software": f"dfast {self.version} (ray_generate)",
        }
        for key, value in pairs.items():
            info.add_itxt(key, str(value))
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()


def run(args):
    """Generates what is missing under args.out; returns the failures as `FILE line N: sentence` lines."""
    jobs = ray_common.read_prompt_file(args.prompt_file)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out {args.out}: cannot create the output folder ({e.strerror})") from None
    ray_common.remove_stale_temporaries(args.out)
    base_seed = args.seed if args.seed is not None else random.randrange(1_000_000_007)
    failures = [(job.line, job.error) for job in jobs if job.error]
    todo = [job for job in jobs if not job.error and not (args.out / image_name(job.index)).exists()]
    skipped = len(jobs) - len(failures) - len(todo)
    print(f"{len(jobs)} prompts, seed {base_seed}: {len(todo)} to generate, {skipped} already written", flush=True)
    written = 0
    if todo:
        import ray

        ray_common.init_ray(args.address, args.object_store_mb)
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [{"job": json.dumps(job_settings(job, args, base_seed))} for job in todo]
        # One block per prompt, so that every actor gets work while any is left.
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        remote_args = {"resources": args.actor_resources} if args.actor_resources else {}
        ds = ds.map_batches(
            Generator,
            fn_constructor_kwargs={
                "model": ray_common.model_path(args.model),
                "ep": args.ep,
                "ep_options": args.ep_options,
                "out": str(args.out.resolve()),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=args.actors),
            num_cpus=args.actor_cpus,
            **remote_args,
        )
        for row in ds.iter_rows():
            result = json.loads(row["result"])
            if "error" in result:
                failures.append((result["line"], result["error"]))
            else:
                written += 1
    ray_common.remove_stale_temporaries(args.out)
    print(f"wrote {written} images, skipped {skipped}, failed {len(failures)} (into {args.out})", flush=True)
    return [f"{args.prompt_file} line {line}: {error}" for line, error in sorted(failures)]


def main(argv=None):
    return ray_common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
