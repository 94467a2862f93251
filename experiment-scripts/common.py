#!/usr/bin/env python3
"""Shared by the experiment scripts: the repository root, the model cards, the real checkpoints' scheduler
configs and a CPU-name helper.

The model cards, models/<name>.toml (sd15, sdxl, ssd-1b), are the one place for per-model defaults (hub id,
pipeline class, scheduler, width, height, steps, guidance) and for how a UNet config is recognised
([match.unet]); dfast embeds the same files. Scripts read them here instead of copying the values.

Sibling scripts import each other and this file with a plain `import common` (or `import export_onnx`):
`python experiment-scripts/x.py` puts the script's own folder first on sys.path, so no sys.path edits are
needed (except under `python -P`/`-I` or PYTHONSAFEPATH, which drop that folder).

The checkpoints' scheduler/scheduler_config.json files (SD15_SCHEDULER, SDXL_SCHEDULER, PIXART_SCHEDULER) and
dfast's --scheduler names (SCHEDULER_CLASSES) live here too: the fixture, export and reference scripts all
build schedulers from them.

Command line, for the shell scripts (bench_common.sh, gpu_sdxl.sh):

  python3 experiment-scripts/common.py defaults sdxl [--prefix CARD_]
      one shell assignment per line, values shell-quoted, for `eval`:
      HUB_ID=stabilityai/stable-diffusion-xl-base-1.0 PIPELINE=StableDiffusionXLPipeline SCHEDULER=euler
      WIDTH=1024 HEIGHT=1024 STEPS=30 GUIDANCE=5.0 (a field the card lacks is printed empty)
  python3 experiment-scripts/common.py cards        the card names, one per line

Needs Python 3.11+ (tomllib), or the tomli package on an older Python.
"""

import json
import platform
import shlex
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
# The card fields the scripts use as defaults, in the order `defaults` prints them.
DEFAULT_FIELDS = ("hub_id", "pipeline", "scheduler", "width", "height", "steps", "guidance")

# The real checkpoints' scheduler configs, verbatim (key order included: the fixtures write them as they are).
# stable-diffusion-v1-5:
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# stable-diffusion-xl-base-1.0:
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# PixArt-alpha/PixArt-XL-2-1024-MS ("lambda_min_clipped" is -Infinity there, which json.dumps writes as the
# bare token -Infinity, as the checkpoint's file holds it):
PIXART_SCHEDULER = {
    "_class_name": "DPMSolverMultistepScheduler",
    "_diffusers_version": "0.22.0.dev0",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "lambda_min_clipped": float("-inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}
# dfast's --scheduler names (README) -> diffusers' scheduler classes, in the order the references run them.
SCHEDULER_CLASSES = {
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "lcm": "LCMScheduler",
}


def card_names() -> list:
    """The model cards in models/, by name (sd15, sdxl, ssd-1b)."""
    return sorted(p.stem for p in MODELS.glob("*.toml"))


def load_card(name: str) -> dict:
    """The whole card models/<name>.toml as a dict; ValueError for an unknown name."""
    path = MODELS / f"{name}.toml"
    if name not in card_names():
        raise ValueError(f"unknown model card '{name}': no {path} (cards: {', '.join(card_names())})")
    if tomllib is None:
        raise RuntimeError(f"reading {path} needs Python 3.11+ (tomllib) or the tomli package; "
                           f"this is Python {platform.python_version()} ({sys.executable})")
    with open(path, "rb") as f:
        return tomllib.load(f)


def card_defaults(name: str) -> dict:
    """The card's defaults: the DEFAULT_FIELDS it sets (hub_id, pipeline, scheduler, width, height, steps,
    guidance)."""
    card = load_card(name)
    return {k: card[k] for k in DEFAULT_FIELDS if k in card}


def _same(config_value, card_value) -> bool:
    """A UNet config.json value equals a card's [match.unet] value (numbers, strings, booleans, lists)."""
    if isinstance(config_value, (list, tuple)) and isinstance(card_value, list):
        return len(config_value) == len(card_value) and all(map(_same, config_value, card_value))
    if isinstance(config_value, bool) or isinstance(card_value, bool):
        return config_value is card_value
    return type(config_value) in (int, float, str) and config_value == card_value


def match_card(unet_config: dict) -> str:
    """The card whose [match.unet] fields all equal the UNet's config, the most specific match winning (as
    dfast recognises a card, src/convert/card.rs); "" when none fits."""
    best, best_n = "", 0
    for name in card_names():
        match = load_card(name).get("match", {}).get("unet", {})
        if len(match) > best_n and all(k in unet_config and _same(unet_config[k], v) for k, v in match.items()):
            best, best_n = name, len(match)
    return best


def write_scheduler_config(pipeline_dir: Path, config: dict):
    """pipeline_dir/scheduler/scheduler_config.json holding `config` as the checkpoints' files do (json.dumps,
    indent 2, a final newline)."""
    (pipeline_dir / "scheduler").mkdir(exist_ok=True)
    (pipeline_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")


def scheduler_class(name: str):
    """diffusers' scheduler class for dfast's --scheduler `name` (SCHEDULER_CLASSES); imports diffusers."""
    import diffusers

    return getattr(diffusers, SCHEDULER_CLASSES[name])


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("defaults", help="a card's defaults as shell assignments")
    d.add_argument("card", help="card name (models/CARD.toml)")
    d.add_argument("--prefix", default="", help="prefix of each variable name, e.g. CARD_")
    d.add_argument("--json", action="store_true", help="one JSON object instead")
    sub.add_parser("cards", help="the card names")
    args = ap.parse_args(argv)
    try:
        if args.command == "cards":
            print("\n".join(card_names()))
        elif args.json:
            print(json.dumps(card_defaults(args.card)))
        else:
            values = card_defaults(args.card)
            for k in DEFAULT_FIELDS:
                print(f"{args.prefix}{k.upper()}={shlex.quote(str(values.get(k, '')))}")
    except (ValueError, RuntimeError, OSError) as e:  # tomllib.TOMLDecodeError is a ValueError
        print(f"common.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
