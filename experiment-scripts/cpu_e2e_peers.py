#!/usr/bin/env python3
"""A whole SD1.5 image on this CPU, end to end: OpenVINO GenAI's `Text2ImagePipeline` (the C++ pipeline of
tokenizer, text encoder, UNet loop and VAE decoder) against `dfast generate`, on one random-weight pipeline,
side by side, with each row's error against diffusers' fp32 pipeline.

  # the SD1.5-size pipeline (about 15 GB under --work; the timed rows take about an hour on 2 cores)
  python experiment-scripts/cpu_e2e_peers.py --work ~/.cache/dfast/e2e-sd15 --out benchmarks/sd15-cpu-e2e/NAME
  # the script checked end to end at a small size in a few minutes, on the models a full run built
  python experiment-scripts/cpu_e2e_peers.py --work ~/.cache/dfast/e2e-sd15 --out /tmp/e2e-check \\
      --width 128 --height 128 --steps 3 --runs 1

Run it with the Python of a venv holding experiment-scripts/requirements-e2e.txt (OpenVINO, GenAI, NNCF,
optimum-intel, diffusers, torch) and give --export-python, the venv of requirements-fixtures.txt, for the ONNX
export (export_onnx.py checks it against torch with onnxruntime).

One pipeline for both tools (built once under --work, each step skipped when its output is there):
  diffusers/        export_onnx.py's random-weight SD1.5 (same seed, same weights), saved with save_pretrained
                    (pytorch_reference.py's builder)
  ov-fp32/          `optimum-cli export openvino --weight-format fp32` of diffusers/: the peer's own model,
                    tokenizer included (openvino-tokenizers)
  onnx/             `export_onnx.py --model diffusers/`: dfast's source
  dfast/PROFILE/    `dfast convert --ep openvino` of onnx/ for fuse-qkv, upsample-conv, int8-conv-vae (a
                    profile of this script's, written to profiles/: int8-conv-upsample with the VAE decoder
                    quantized too; calibrated: --calibrate N prompts of --calibrate-steps steps, the UNet
                    inputs saved to calib/, the decoder's on the same images' final latents) and
                    int8-conv-upsample (the same UNet ranges, --calibration-from)
  ov-int8/          the peer's int8: optimum-intel's hybrid recipe (what `optimum-cli export openvino
                    --weight-format int8 --dataset ...` runs) through its own functions: the UNet quantized by
                    _get_hybrid_mixed_quantization_config + _mixed_quantization on calib/, the very UNet inputs
                    dfast's int8 rows were calibrated on (same prompts, same latents); text encoder and VAE
                    weight-only int8 (_weight_only_quantization, OVWeightQuantizationConfig(bits=8)), as the
                    hybrid recipe does
  reference/        diffusers fp32 (PyTorch) on diffusers/: each configuration's final latents and decoded image

Configurations (--configs): `20-step`: --steps (default 20) with the pipeline's PNDM (21 UNet calls), guidance
7.5; `1-step`: one step of Euler ancestral with trailing timestep spacing and no guidance (the Turbo
configuration; GenAI's EulerA, dfast's euler-a, diffusers' EulerAncestralDiscreteScheduler, all from one
scheduler_config.json written under --work). Both at --width x --height (512x512), one prompt, --seed, the
initial noise drawn as torch.Generator("cpu").manual_seed(seed) draws it on every side (GenAI's TorchGenerator).

Rows (--rows, default all), each in a fresh process, one after the other:
  genai-f32            Text2ImagePipeline(ov-fp32/), compile("CPU"): dynamic shapes, OpenVINO's default
                       precision (bf16 where the CPU has it natively, else f32)
  genai-f32-static     the same after pipe.reshape(1, height, width, guidance): static shapes
  genai-int8-static    ov-int8/ (hybrid), reshaped
  dfast-fuse-qkv       dfast generate --ep openvino on dfast/fuse-qkv (the seed's fused QKV, f32)
  dfast-upsample-conv  ... on dfast/upsample-conv (f32, exact), with --ep-option static_shapes=true and
                       streams=2 (int8-conv-upsample's OpenVINO settings: the two rows differ by int8 alone)
  dfast-int8-conv-upsample  ... on dfast/int8-conv-upsample (int8 convolutions in the UNet)
  dfast-int8-conv-vae  ... on dfast/int8-conv-vae (int8 convolutions in the UNet and the VAE decoder)
Per row: --warmup calls (steps min(2, steps), same shapes, untimed), then --runs timed calls of the generate
call alone (GenAI's generate(); dfast's runs after the pipeline is loaded, from `--json`): text encoder, UNet
per call (mean over the calls of the timed runs), VAE decode, total (median over the runs); peak RSS of the
row's process (wait4). Errors of the last run against diffusers fp32: relative L2 of the final latents
(GenAI's through its step callback) and of the decoded image (8-bit, centred: (u8 - 127.5) / 127.5, the
decoder's [-1, 1] range). The int8 VAE decoder's own error: int8-conv-vae's decoder against upsample-conv's
fp32 one on diffusers' final latents of each configuration (OpenVINO's Python API on dfast's ONNX files).

Output in --out: e2e.md, e2e.csv, e2e.json (rows, machine, versions), logs/<row>-<config>.log; rows of other
configurations already in --out/e2e.json are kept, so the configurations can run one at a time with their own
--rows. The images stay
under --work (rows/); random-weight images are noise.

Random weights: latency depends on shapes, not on weight values; the errors compare runtimes on the same
random weights and say nothing about image quality.
"""

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import cpu_peers  # machine facts, versions, relative L2

CONFIGS = ("20-step", "1-step")
ROWS = ("genai-f32", "genai-f32-static", "genai-int8-static", "dfast-fuse-qkv", "dfast-upsample-conv",
        "dfast-int8-conv-upsample", "dfast-int8-conv-vae")
DFAST_PROFILES = ("fuse-qkv", "upsample-conv", "int8-conv-vae", "int8-conv-upsample")
# int8-conv-upsample with the VAE decoder quantized as well, to measure what int8 does to the decoder.
INT8_VAE_PROFILE = """name = "int8-conv-vae"
extends = "int8-conv-upsample"
[int8-static]
components = ["unet", "vae_decoder"]
"""
# Session options of a dfast row beyond its folder's own: upsample-conv with int8-conv-upsample's OpenVINO
# settings (the guidance pair as two one-row requests on statically shaped sessions), so that the f32 row
# and the int8 row differ by int8 alone.
DFAST_OPTIONS = {"dfast-upsample-conv": ["static_shapes=true", "streams=2"]}
PROMPT = "ghibli style, a fantasy landscape with castles"


def calibration_prompts() -> list:
    """dfast's calibration prompts, read from its source so that both int8 rows see the same list."""
    text = (ROOT / "src/convert/calibrate.rs").read_text()
    block = text[text.index("pub const PROMPTS"):]
    block = block[:block.index("];")]
    return re.findall(r'"([^"]+)"', block)


def log_to(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")
    return log


def run(cmd: list, log, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    t = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, **kw)
    log(f"  done in {time.perf_counter() - t:.0f} s")


# ----------------------------------------------------------------------------------------------------------
# Building the pipeline for both tools.


def build(args, log):
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    if not (w / "diffusers").exists():
        run([args.export_python, HERE / "pytorch_reference.py", "--_materialize", w / "diffusers", "--arch", "sd15"],
            log)
    legacy_clip_keys(w / "diffusers" / "text_encoder" / "model.safetensors", log)
    if not (w / "ov-fp32").exists():
        tmp = w / "ov-fp32.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        run([sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", w / "diffusers",
             "--task", "text-to-image", "--weight-format", "fp32", tmp], log)
        tmp.rename(w / "ov-fp32")
    if not (w / "onnx").exists():
        run([args.export_python, HERE / "export_onnx.py", "--model", w / "diffusers", "--components",
             "text_encoder,unet,vae_decoder", "--out", w / "onnx"], log)
    for profile in DFAST_PROFILES:
        dest = w / "dfast" / profile
        if dest.exists():
            continue
        name = profile
        if profile == "int8-conv-vae":
            (w / "profiles").mkdir(exist_ok=True)
            name = w / "profiles" / "int8-conv-vae.toml"
            name.write_text(INT8_VAE_PROFILE)
        cmd = [args.dfast, "convert", "--model", w / "onnx", "--profile", name, "--ep", "openvino", "--out", dest]
        if profile == "int8-conv-vae":
            shutil.rmtree(w / "calib", ignore_errors=True)
            cmd += ["--calibrate", args.calibrate, "--calibrate-steps", args.calibrate_steps,
                    "--save-calibration-inputs", w / "calib"]
        elif profile == "int8-conv-upsample":
            cmd += ["--calibration-from", w / "dfast" / "int8-conv-vae"]
        run(cmd, log)
    if not (w / "ov-int8").exists():
        hybrid_int8(w, log)
    write_scheduler_configs(w)


def legacy_clip_keys(path: Path, log):
    """The text encoder's weights under the names every transformers 5 release reads (`text_model.`...).

    transformers 5.23 (requirements-fixtures.txt) saves CLIPTextModel without the `text_model.` prefix and reads
    both; 5.5 (optimum-intel's) reads only the prefixed names and would start the peer's text encoder from new
    random weights, silently."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path)
    if all(k.startswith("text_model.") for k in tensors):
        return
    save_file({k if k.startswith("text_model.") else "text_model." + k: v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    log(f"{path}: weights renamed to text_model.* (what optimum-intel's transformers reads)")


def hybrid_int8(w: Path, log):
    """optimum-intel's hybrid recipe on ov-fp32/, calibrated on calib/ (dfast's recorded UNet inputs)."""
    import nncf
    import openvino as ov
    from optimum.intel import OVWeightQuantizationConfig
    from optimum.intel.openvino.quantization import (
        _get_hybrid_mixed_quantization_config,
        _mixed_quantization,
        _weight_only_quantization,
    )

    core = ov.Core()
    tmp = w / "ov-int8.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(w / "ov-fp32", tmp)
    unet = core.read_model(str(tmp / "unet" / "openvino_model.xml"))
    types = {p.get_any_name(): p.get_element_type().to_dtype() for p in unet.inputs}
    samples = []
    for f in sorted((w / "calib").glob("sample-*.npz")):
        with np.load(f) as z:
            samples.append({k: np.asarray(z[k]).astype(types[k]).reshape(z[k].shape or (1,))
                            if k == "timestep" else np.asarray(z[k], dtype=types[k]) for k in types})
    if not samples:
        raise SystemExit(f"cpu_e2e_peers: no calibration samples in {w / 'calib'}")
    t = time.perf_counter()
    config = _get_hybrid_mixed_quantization_config(unet, OVWeightQuantizationConfig(bits=8, num_samples=len(samples)))
    q = _mixed_quantization(unet, config, nncf.Dataset(samples))
    save_beside(ov, q, tmp / "unet" / "openvino_model.xml")
    log(f"UNet: hybrid int8 on {len(samples)} calibration samples in {time.perf_counter() - t:.0f} s")
    for component in ("text_encoder", "vae_decoder", "vae_encoder"):
        path = tmp / component / "openvino_model.xml"
        if not path.exists():
            continue
        model = _weight_only_quantization(core.read_model(str(path)), OVWeightQuantizationConfig(bits=8))
        save_beside(ov, model, path)
        log(f"{component}: weight-only int8")
    tmp.rename(w / "ov-int8")


def save_beside(ov, model, path: Path):
    """Saves `model` over `path` (.xml and .bin) by way of new files: the model read from `path` still maps
    its weights from the old .bin, which writing in place would cut from under it (SIGBUS)."""
    new = path.with_name(path.stem + ".new.xml")
    ov.save_model(model, str(new), compress_to_fp16=False)
    del model
    for suffix in (".xml", ".bin"):
        new.with_suffix(suffix).replace(path.with_suffix(suffix))


def write_scheduler_configs(w: Path):
    """The 1-step configuration's scheduler: the pipeline's config as EulerAncestral with trailing spacing."""
    base = json.loads((w / "diffusers" / "scheduler" / "scheduler_config.json").read_text())
    cfg = {k: v for k, v in base.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}
    cfg.update({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"})
    (w / "schedulers").mkdir(exist_ok=True)
    (w / "schedulers" / "euler-a-trailing.json").write_text(json.dumps(cfg, indent=2) + "\n")


def reference_file(args, config: str, what: str) -> Path:
    """reference/CONFIG-WxH-STEPS-WHAT.npy: one per configuration, size and step count."""
    steps = config_settings(args, config)["steps"]
    return args.work / "reference" / f"{config}-{args.width}x{args.height}-{steps}-{what}.npy"


def config_settings(args, config: str) -> dict:
    if config == "20-step":
        return {"steps": args.steps, "guidance": 7.5, "scheduler": None}
    return {"steps": 1, "guidance": 0.0, "scheduler": str(args.work / "schedulers" / "euler-a-trailing.json")}


# ----------------------------------------------------------------------------------------------------------
# The reference and the rows, each in a child process.


def reference(args, config: str, log):
    """diffusers fp32 on diffusers/: the final latents and the decoded image (u8), saved under reference/."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    s = config_settings(args, config)
    pipe = StableDiffusionPipeline.from_pretrained(args.work / "diffusers", torch_dtype=torch.float32)
    if s["scheduler"]:
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(json.loads(Path(s["scheduler"]).read_text()))
    pipe.set_progress_bar_config(disable=True)
    t = time.perf_counter()
    with torch.no_grad():
        latents = pipe(PROMPT, num_inference_steps=s["steps"], guidance_scale=s["guidance"], width=args.width,
                       height=args.height, generator=torch.Generator("cpu").manual_seed(args.seed),
                       output_type="latent").images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    u8 = ((image[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    reference_file(args, config, "latents").parent.mkdir(exist_ok=True)
    np.save(reference_file(args, config, "latents"), latents.numpy())
    np.save(reference_file(args, config, "image"), u8)
    log(f"reference {config}: {time.perf_counter() - t:.0f} s")


def genai_row(args, row: str, config: str, log) -> dict:
    import openvino_genai as g

    s = config_settings(args, config)
    folder = args.work / ("ov-int8" if "int8" in row else "ov-fp32")
    t = time.perf_counter()
    pipe = g.Text2ImagePipeline(str(folder))
    if s["scheduler"]:
        pipe.set_scheduler(g.Scheduler.from_config(s["scheduler"], g.Scheduler.Type.EULER_ANCESTRAL_DISCRETE))
    if row.endswith("-static"):
        pipe.reshape(1, args.height, args.width, s["guidance"])
    pipe.compile("CPU")
    load_s = time.perf_counter() - t
    latents = {}

    def callback(step, num_steps, latent):
        latents["last"] = np.array(latent.data, dtype=np.float32, copy=True)
        return False

    runs = []
    image = None
    for i in range(args.warmup + args.runs):
        steps = s["steps"] if i >= args.warmup else min(2, s["steps"])
        t = time.perf_counter()
        image = pipe.generate(PROMPT, width=args.width, height=args.height, num_inference_steps=steps,
                              guidance_scale=s["guidance"], generator=g.TorchGenerator(args.seed), callback=callback)
        total = time.perf_counter() - t
        if i < args.warmup:
            continue
        m = pipe.get_performance_metrics()
        text = m.get_text_encoder_infer_duration()
        unet = m.raw_metrics.unet_inference_durations
        runs.append({"total": total, "text_encoding": sum(text.values()) / 1e3 if isinstance(text, dict)
                     else float(text) / 1e3,
                     "unet_calls": [seconds(d) for d in unet],
                     "vae_decode": m.get_vae_decoder_infer_duration() / 1e3})
        log(f"run {len(runs)}: {total:.2f} s")
    return {"load_s": load_s, "runs": runs, "image": np.array(image.data)[0], "latents": latents.get("last")}


def seconds(duration) -> float:
    """A GenAI raw duration (microseconds, as a number or an object with count()) in seconds."""
    return float(duration.count() if hasattr(duration, "count") else duration) / 1e6


def dfast_row(args, row: str, config: str, log) -> dict:
    s = config_settings(args, config)
    folder = args.work / "dfast" / row.removeprefix("dfast-")
    dest = args.work / "rows" / f"{row}-{config}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    prompts = dest / "prompts.jsonl"
    lines = [{"prompt": PROMPT, "seed": args.seed, "steps": s["steps"] if i >= args.warmup else min(2, s["steps"])}
             for i in range(args.warmup + args.runs)]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cmd = [args.dfast, "generate", "--model", folder, "--ep", "openvino", "--prompt-file", prompts, "--json",
           "--guidance", s["guidance"], "--width", args.width, "--height", args.height, "--out", dest / "image.png",
           "--save-latents", dest / "latents.npy"]
    if s["scheduler"]:
        cmd += ["--scheduler", "euler-a", "--scheduler-config", s["scheduler"]]
    for option in DFAST_OPTIONS.get(row, []):
        cmd += ["--ep-option", option]
    log("$ " + " ".join(str(c) for c in cmd))
    t = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    for line in out.stderr.splitlines():
        log("  " + line)
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    runs = [{"total": r["timings_s"]["total"], "text_encoding": r["timings_s"]["text_encoding"],
             "unet_calls": r["timings_s"]["unet_steps"], "vae_decode": r["timings_s"]["vae_decode"]}
            for r in reports[args.warmup:]]
    for i, r in enumerate(runs):
        log(f"run {i + 1}: {r['total']:.2f} s")
    last = f"-{len(lines) - 1}" if len(lines) > 1 else ""
    from PIL import Image

    image = np.asarray(Image.open(dest / f"image{last}.png").convert("RGB"))
    latents = np.load(dest / f"latents{last}.npy")
    return {"load_s": wall - sum(r["timings_s"]["total"] for r in reports), "runs": runs, "image": image,
            "latents": latents}


def child(args):
    row, config = args.child.split(":")
    log = log_to(args.out / "logs" / f"{row}-{config}.log")
    if row == "reference":
        reference(args, config, log)
        return
    result = (genai_row if row.startswith("genai") else dfast_row)(args, row, config, log)
    dest = args.work / "rows" / f"{row}-{config}"
    dest.mkdir(parents=True, exist_ok=True)
    np.save(dest / "final-image.npy", result.pop("image"))
    latents = result.pop("latents")
    if latents is not None:
        np.save(dest / "final-latents.npy", latents)
    (dest / "timings.json").write_text(json.dumps(result))


def run_child(args, row: str, config: str) -> tuple:
    """Runs one row in a fresh process; (seconds, peak RSS in MiB)."""
    cmd = [sys.executable, __file__, "--_child", f"{row}:{config}"] + args.passthrough
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"cpu_e2e_peers: {row} ({config}) failed with exit code {p.returncode}; see its log")
    return time.perf_counter() - t, usage.ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------------------------------
# Tables.


def rel_l2(x, ref) -> float:
    return cpu_peers.rel_l2(np.asarray(x), np.asarray(ref))


def centred(u8) -> np.ndarray:
    return (np.asarray(u8, dtype=np.float64) - 127.5) / 127.5


def summarize(args, row: str, config: str, peak_mb: float) -> dict:
    dest = args.work / "rows" / f"{row}-{config}"
    t = json.loads((dest / "timings.json").read_text())
    image = np.load(dest / "final-image.npy")
    latents = np.load(dest / "final-latents.npy") if (dest / "final-latents.npy").exists() else None
    calls = [c for r in t["runs"] for c in r["unet_calls"]]
    med = lambda key: statistics.median(r[key] for r in t["runs"])
    return {
        "config": config, "row": row, "runs": len(t["runs"]),
        "total_s": med("total"), "text_encoder_s": med("text_encoding"),
        "unet_call_s": statistics.mean(calls) if calls else None,
        "unet_calls": len(t["runs"][0]["unet_calls"]) if t["runs"] else 0,
        "vae_decode_s": med("vae_decode"), "load_s": t["load_s"], "peak_rss_mib": peak_mb,
        "latents_rel_l2": rel_l2(latents, np.load(reference_file(args, config, "latents"))) if latents is not None else None,
        "image_rel_l2": rel_l2(centred(image), centred(np.load(reference_file(args, config, "image")))),
        "totals_s": [r["total"] for r in t["runs"]],
    }


def decoder_error(args, config: str, log):
    """int8-conv-vae's int8 VAE decoder against upsample-conv's fp32 one on the same latents (diffusers' final
    latents of the configuration), relative L2 of the decoded image in [-1, 1]. Run by OpenVINO's Python API on
    dfast's ONNX files (dfast runs them through ONNX Runtime's OpenVINO EP; both read them with OpenVINO's
    ONNX front end)."""
    import openvino as ov

    latents = np.load(reference_file(args, config, "latents"))
    scale = json.loads((args.work / "onnx" / "vae_decoder" / "config.json").read_text()).get("scaling_factor",
                                                                                            0.18215)
    core = ov.Core()
    images = {}
    for profile in ("upsample-conv", "int8-conv-vae"):
        path = args.work / "dfast" / profile / "vae_decoder" / "model.onnx"
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        images[profile] = np.array(compiled({"latent_sample": (latents / scale).astype(np.float32)})[0])
    err = rel_l2(images["int8-conv-vae"], images["upsample-conv"])
    log(f"int8 VAE decoder vs fp32 on diffusers' {config} latents: relative L2 {err:.2e}")
    return {"image_rel_l2": err}


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def write_tables(args, rows: list, meta: dict):
    out = args.out
    fields = ["config", "row", "runs", "total_s", "ratio", "text_encoder_s", "unet_calls", "unet_call_s",
              "vae_decode_s", "peak_rss_mib", "latents_rel_l2", "image_rel_l2", "load_s", "totals_s"]
    for config in CONFIGS:
        mine = [r for r in rows if r["config"] == config]
        peers = [r["total_s"] for r in mine if r["row"].startswith("genai")]
        for r in mine:
            r["ratio"] = r["total_s"] / min(peers) if peers else None
    with open(out / "e2e.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)
    (out / "e2e.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# SD1.5 end to end on the CPU: OpenVINO GenAI vs dfast ({meta['date']})", "",
             (f"Machine: {meta['cpu']['cpu']} (family {meta['cpu']['cpu_family']} model {meta['cpu']['model']}), "
             f"{meta['cpu']['cores']} cores, {meta['cpu']['memory_gb']} GB, ISA {' '.join(meta['cpu']['isa'])}; "
             f"{args.width}x{args.height}, prompt {PROMPT!r}, seed {args.seed}; {args.warmup} warm-up + "
             f"{args.runs} timed generate calls per row (medians), each row in its own process, one after the "
             "other. Random weights: latency does not depend on weight values; the errors compare runtimes on the "
             "same random weights. Ratio: total / the fastest GenAI row of the configuration. Errors: relative L2 "
             "of the final latents and of the decoded image (8-bit, centred) against diffusers fp32."), ""]
    for config in CONFIGS:
        mine = [r for r in rows if r["config"] == config]
        if not mine:
            continue
        lines += [f"## {config}", "", ("| row | total | ratio | text encoder | UNet per call (calls) | VAE decode | "
                  "peak RSS | latents rel. L2 | image rel. L2 |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mine:
            lines.append(f"| {r['row']} | {r['total_s']:.2f} s | {fmt(r['ratio'], '.3f')} | "
                         f"{r['text_encoder_s'] * 1e3:.0f} ms | {fmt(r['unet_call_s'], '.3f')} s ({r['unet_calls']}) "
                         f"| {r['vae_decode_s']:.2f} s | {r['peak_rss_mib'] / 1024:.2f} GiB | "
                         f"{fmt(r['latents_rel_l2'], '.2e')} | {r['image_rel_l2']:.2e} |")
        dec = meta["decoder_error"].get(config)
        if dec:
            lines += ["", (f"int8-conv-vae's int8 VAE decoder alone, against upsample-conv's fp32 decoder on "
                           f"diffusers' final latents: decoded image relative L2 {dec['image_rel_l2']:.2e} "
                           "(OpenVINO's Python API on dfast's ONNX decoders).")]
        lines.append("")
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    (out / "e2e.md").write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/dfast/e2e-sd15",
                    help="models and run files (default ~/.cache/dfast/e2e-sd15)")
    ap.add_argument("--out", type=Path, required=True, help="result folder")
    ap.add_argument("--dfast", type=Path, default=ROOT / "target/release/dfast")
    ap.add_argument("--export-python", default=sys.executable,
                    help="Python with requirements-fixtures.txt, for export_onnx.py and the PyTorch builder")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="steps of the 20-step configuration")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate", type=int, default=2, help="calibration prompts (dfast's list, first N)")
    ap.add_argument("--calibrate-steps", type=int, default=10,
                    help="steps per calibration image (enough for finished latents: the VAE decoder's samples)")
    ap.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.expanduser().resolve()
    args.out = args.out.resolve()
    args.dfast = args.dfast.resolve()
    args.passthrough = [a for a in sys.argv[1:] if not a.startswith("--_child")]
    if args.child:
        child(args)
        return
    configs = [c for c in args.configs.split(",") if c]
    rows = [r for r in args.rows.split(",") if r]
    bad = [c for c in configs if c not in CONFIGS] + [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"cpu_e2e_peers: unknown configuration or row {', '.join(bad)}; expected "
                         f"{', '.join(CONFIGS)} and {', '.join(ROWS)}")
    if not args.dfast.is_file():
        raise SystemExit(f"cpu_e2e_peers: {args.dfast}: no dfast binary (cargo build --release, or --dfast)")
    args.out.mkdir(parents=True, exist_ok=True)
    log = log_to(args.out / "logs" / "build.log")
    build(args, log)
    for config in configs:
        if not reference_file(args, config, "image").exists():
            run_child(args, "reference", config)
    decoder = {c: decoder_error(args, c, log) for c in configs}
    loads = []
    # Rows of the other configurations from an earlier run into the same --out are kept.
    results, earlier = [], args.out / "e2e.json"
    if earlier.exists():
        old = json.loads(earlier.read_text())
        results = [r for r in old["rows"] if r["config"] not in configs]
        loads = old["meta"].get("load_averages", []) if results else []
        decoder = {**{c: d for c, d in old["meta"].get("decoder_error", {}).items() if c not in configs}, **decoder}
    for config in configs:
        for row in rows:
            loads.append(Path("/proc/loadavg").read_text().split()[:3])
            log(f"{row} ({config}); load average {' '.join(loads[-1])}")
            _, peak = run_child(args, row, config)
            results.append(summarize(args, row, config, peak))
            write_tables(args, results, {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_info(),
                                         "versions": versions(), "load_averages": loads,
                                         "decoder_error": decoder})
    log(f"wrote {args.out / 'e2e.md'}")


def cpu_info() -> dict:
    """cpu_peers' machine facts plus the CPU's family and model (AMD's Zen 2 and Zen 4 share a name)."""
    info = cpu_peers.cpu_info()
    text = Path("/proc/cpuinfo").read_text()
    for key in ("cpu family", "model"):
        m = re.search(rf"^{key}\s*:\s*(\d+)", text, re.MULTILINE)
        info[key.replace(" ", "_")] = int(m.group(1)) if m else None
    return info


def versions() -> dict:
    return {p: cpu_peers.version(p) for p in ("openvino", "openvino-genai", "openvino-tokenizers", "nncf",
                                              "optimum-intel", "diffusers", "torch")}


if __name__ == "__main__":
    main()
