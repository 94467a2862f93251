#!/usr/bin/env python3
"""The seed's own PyTorch recipe (huggingface/diffusion-fast) on the model dfast benchmarks, as rows of dfast's
benchmark CSV (src/bench/schema.rs), so that one `dfast report` shows dfast and PyTorch on the same machine.

  # a diffusers pipeline folder (PyTorch weights), or a Hub id already in the local cache
  python experiment-scripts/pytorch_reference.py --model path/to/pipeline --device cuda --out benchmarks/sdxl
  # the same random-weight real architecture that `export_onnx.py --random-weights --arch ...` exports
  python experiment-scripts/pytorch_reference.py --random-weights --arch sd15 --device cpu --steps 2 \
      --width 512 --height 512 --out benchmarks/sd15-cpu

Settings (`--settings`, comma list, default all five, in the seed's order; each runs in a fresh process):
  fp32                          fp32 weights and compute, attention without a fused kernel (diffusers'
                                `AttnProcessor`, what the seed's `set_default_attn_processor` picks)
  bf16                          bf16 weights and compute, still plain attention
  bf16+sdpa                     + fused scaled-dot-product attention (`AttnProcessor2_0`)
  bf16+sdpa+compile             + channels_last and torch.compile (fullgraph) of the UNet and of VAE decode
  bf16+sdpa+compile+fused-qkv   + `pipe.fuse_qkv_projections()` (UNet and VAE; `FusedAttnProcessor2_0`)
A setting is `PRECISION[+sdpa][+compile][+fused-qkv]` with PRECISION fp32, bf16 or fp16, so e.g.
`fp16+sdpa+compile+fused-qkv` works too (fused-qkv needs sdpa). The seed's last step, dynamic int8
(torchao), has no row here: torchao is not among the pinned packages.

Compile: `--compile-mode` (default `default`; the seed used `max-autotune`, which takes far longer to compile)
and `--inductor-tuning` (the seed's `change_comp_config`: conv 1x1 as matmul, coordinate-descent tuning, no
epilogue fusion). The compile time lands in `first_run_s`, not in `session_create_s`; each setting compiles
cold (its own inductor/Triton cache directory, removed afterwards) unless `--reuse-compile-cache`.
SDXL's VAE: its config says `force_upcast`, and the seed decodes it in fp32 (`upcast_vae`); so does dfast
(the model card's `vae_decoder_fp32`). `--upcast-vae auto` (default) keeps the VAE in fp32 whenever the
config says so and the setting is not fp32; the latents are cast to fp32 right before decode.

Timings (torch.cuda.synchronize around each timed region on the GPU): text encoding (`encode_prompt`), every
UNet call (forward hooks on the module the pipeline calls, the classifier-free-guidance batch included;
median over all steps of the timed runs), VAE decode, the whole call. `session_create_s`: pipeline load +
dtype/attention/fusion changes + `.to(device)` (+ wrapping in torch.compile, which is lazy). As in dfast
bench, the first whole call is timed on its own (`first_run_s`, compilation included), then `--warmup` more
calls, then `--runs` timed calls. `peak_host_mb`: the setting's process's max RSS;
`peak_device_mb`: torch.cuda.max_memory_allocated.

UNet alone (`unet_alone_ms`): after the timed runs, the inputs of one UNet call of the last timed run (the
first step's; positional and keyword arguments exactly as the pipeline passed them: sample, timestep,
encoder_hidden_states, and for SDXL added_cond_kwargs; tensors cloned) are fed back to `pipe.unet`, the same
(possibly torch.compile'd) module, with the timing hooks removed: 2 untimed calls, then `--unet-alone-runs`
(default 10; 0 leaves the column empty) calls under torch.no_grad, each between torch.cuda.synchronize() calls
on the GPU; the median, in ms. Both figures are synchronised on either side of the call, so the per-step
Python work between UNet calls (scheduler step, guidance arithmetic, callbacks) is in neither; why the call
inside the pipeline costs more than the same call alone is not established yet (benchmarks/README.md names the
CUPTI check that would show it). `unet_step_ms` is what a UNet step costs in the pipeline; `unet_alone_ms`
is what the (compiled) UNet itself costs, the figure to set beside `dfast unet-step` (dfast's own rows leave
`unet_alone_ms` empty). On an H200, the seed's torch.compile recipe measured 55 ms per UNet call in the
pipeline against 34.45 ms for the compiled UNet called alone on the same inputs. A `pytorch.csv` written
before this column has another header: give another --out or move it away. On a shared or busy CPU, pass
`--threads` (e.g. 1): oversubscribed OpenMP threads can make either figure many times slower.

Output: rows appended to `OUT/pytorch.csv` (created with dfast's header; an existing file must have the same
header) and one JPEG per setting, `OUT/pytorch-<ep>-<setting>.jpg` (the first image of the last timed run).
With `--random-weights` the pipeline is built once (export_onnx.random_pipeline: same seed, same weights as
the ONNX export) and saved with save_pretrained to `--weights-dir` (default `OUT/.pytorch-random-<arch>`,
removed at the end unless `--keep-weights`; an existing folder is reused), so that every setting loads it
from disk the way dfast loads its ONNX files. SDXL fp32 needs about 14 GB of disk there and in memory.

UNet alone on given inputs (`--unet-alone-inputs FILE.npz`, one setting; gpu_sdxl.sh's GPU check): no
pipeline. The UNet of `--random-weights --arch A` (export_onnx.random_unet: the export's weights) or of
`--model DIR` (its PyTorch weights; an ONNX folder's unet/config.json with random weights drawn after
torch.manual_seed(0), for dry runs) in the setting's precision, attention, fused QKV, channels_last and
torch.compile, called on the .npz's arrays (gpu_check.py inputs: sample, timestep, encoder_hidden_states,
and SDXL's text_embeds and time_ids as added_cond_kwargs; written there from the UNet's config when the file
is missing). The first call (compilation) and `--warmup` more are untimed; then `--ready FILE` is written
(JSON: the first call's seconds), the process waits for `--go FILE` (at most `--go-timeout` s; without
`--go` it goes on at once), times `--unet-alone-runs` calls, each between torch.cuda.synchronize() calls,
and writes `--json FILE` with the keys of `dfast unet-step --json` (median_s, min_s, runs_s, first_run_s,
session_create_s = building and moving the UNet) plus device and torch version; `--output FILE.npy` gets
the last call's output in float32. So the compilation can run beside other work and the timing wait until
the machine is quiet.

Versions: experiment-scripts/requirements-fixtures.txt (torch 2.11.0, diffusers 0.42.1). torch.compile on the
CPU needs a C++ compiler (g++).
"""

import argparse
import csv
import datetime as dt
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # this script's folder is on sys.path when it runs as a script

# dfast's CSV columns, in order (src/bench/schema.rs COLUMNS, less its optional dfast-only host_scheduler_ms and
# host_copy_ms, which dfast reads as empty in these rows).
COLUMNS = [
    "timestamp", "tag", "model", "model_card", "pipeline", "runtime", "profile", "passes", "precision", "ep",
    "ep_options", "onnxruntime_version", "dfast_version", "device", "scheduler", "steps", "batch_size", "width", "height",
    "warmup_runs", "timed_runs", "session_create_s", "first_run_s", "text_encode_ms", "unet_step_ms",
    "unet_alone_ms", "vae_decode_ms", "total_s", "total_min_s", "total_max_s", "peak_host_mb", "peak_device_mb",
    "image", "command",
]
CSV_NAME = "pytorch.csv"
DEFAULT_SETTINGS = ["fp32", "bf16", "bf16+sdpa", "bf16+sdpa+compile", "bf16+sdpa+compile+fused-qkv"]
FLAGS = ("sdpa", "compile", "fused-qkv")
PRECISIONS = ("fp32", "bf16", "fp16")
# The seed's benchmark prompt.
PROMPT = "ghibli style, a fantasy landscape with castles"


def parse_setting(name: str) -> dict:
    parts = name.split("+")
    if parts[0] not in PRECISIONS:
        raise ValueError(f"setting '{name}': must start with one of {', '.join(PRECISIONS)}")
    flags = set(parts[1:])
    unknown = flags - set(FLAGS)
    if unknown or len(flags) != len(parts) - 1:
        raise ValueError(f"setting '{name}': unknown or repeated part(s) {sorted(unknown) or parts[1:]}; "
                         f"known: {', '.join(FLAGS)}")
    if "fused-qkv" in flags and "sdpa" not in flags:
        raise ValueError(f"setting '{name}': fused-qkv needs sdpa (diffusers' fused processor is SDPA-based)")
    return {"precision": parts[0], "sdpa": "sdpa" in flags, "compile": "compile" in flags,
            "fused_qkv": "fused-qkv" in flags}


def file_safe(setting: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", setting.replace("+", "-"))


def dfast_version() -> str:
    try:
        m = re.search(r'^version\s*=\s*"([^"]+)"', (common.ROOT / "Cargo.toml").read_text(), re.MULTILINE)
        return m.group(1) if m else ""
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------------------
# Child: one setting in this process.


def run_setting(args, setting: str, model_dir: str) -> dict:
    import resource

    import diffusers
    import torch
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    spec = parse_setting(setting)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("pytorch_reference: --device cuda, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()

    # --- session: load, set up, move, wrap -------------------------------------------------------------
    sync()
    t0 = time.perf_counter()
    kwargs = {"dtype": dtype}
    index = Path(model_dir) / "model_index.json"
    if index.exists() and (json.loads(index.read_text()).get("safety_checker") or [None])[0]:
        kwargs.update(safety_checker=None, requires_safety_checker=False)  # dfast runs no safety checker
    pipe = DiffusionPipeline.from_pretrained(model_dir, **kwargs)
    if args.scheduler:
        # dfast's --scheduler name -> diffusers' class, with the pipeline's own config.
        pipe.scheduler = common.scheduler_class(args.scheduler).from_config(pipe.scheduler.config)
    attn = AttnProcessor2_0() if spec["sdpa"] else AttnProcessor()
    pipe.unet.set_attn_processor(attn)
    pipe.vae.set_attn_processor(attn)
    if spec["fused_qkv"]:
        pipe.fuse_qkv_projections()
    upcast = {"yes": True, "no": False}.get(args.upcast_vae)
    if upcast is None:
        upcast = bool(getattr(pipe.vae.config, "force_upcast", False)) and dtype != torch.float32
    if upcast:
        pipe.vae.to(dtype=torch.float32)
    vae_dtype = next(pipe.vae.post_quant_conv.parameters()).dtype
    pipe = pipe.to(device)
    if spec["compile"]:
        if args.inductor_tuning:
            cfg = torch._inductor.config
            cfg.conv_1x1_as_mm = True
            cfg.coordinate_descent_tuning = True
            cfg.epilogue_fusion = False
            cfg.coordinate_descent_check_all_directions = True
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.unet = torch.compile(pipe.unet, mode=args.compile_mode, fullgraph=True)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=args.compile_mode, fullgraph=True)
    sync()
    session_create_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)

    # --- timing wrappers --------------------------------------------------------------------------------
    rec = {"text": [], "unet": [], "vae": []}
    encode_prompt = pipe.encode_prompt

    def timed_encode(*a, **k):
        sync()
        t = time.perf_counter()
        out = encode_prompt(*a, **k)
        sync()
        rec["text"].append(time.perf_counter() - t)
        return out

    pipe.encode_prompt = timed_encode
    unet_start = []
    # The inputs of the first UNet call of the run marked for capture (the last timed run), for the UNet alone.
    capture = {"on": False, "args": None, "kwargs": None}

    def pre_hook(_module, args, kwargs):
        if capture["on"] and capture["args"] is None:
            capture["args"], capture["kwargs"] = clone_inputs(args), clone_inputs(kwargs)
        sync()
        unet_start.append(time.perf_counter())

    def post_hook(_module, _inputs, _output):
        sync()
        rec["unet"].append(time.perf_counter() - unet_start.pop())

    # On the module the pipeline calls: outside the compiled region when pipe.unet is torch.compile's wrapper.
    hooks = [pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True),
             pipe.unet.register_forward_hook(post_hook)]
    decode = pipe.vae.decode

    def timed_decode(z, *a, **k):
        sync()
        t = time.perf_counter()
        out = decode(z.to(vae_dtype), *a, **k)
        sync()
        rec["vae"].append(time.perf_counter() - t)
        return out

    pipe.vae.decode = timed_decode

    # --- runs -------------------------------------------------------------------------------------------
    scale = pipe.vae_scale_factor
    width = args.width or pipe.unet.config.sample_size * scale
    height = args.height or pipe.unet.config.sample_size * scale
    call = {"prompt": args.prompt, "num_inference_steps": args.steps, "num_images_per_prompt": args.batch_size,
            "width": width, "height": height}
    if args.guidance is not None:
        call["guidance_scale"] = args.guidance
    # As dfast bench: a first run timed on its own (compilation happens here), --warmup more, then --runs.
    totals, first_run_s, image = [], None, None
    first_timed = 1 + args.warmup
    n_calls = first_timed + args.runs
    for i in range(n_calls):
        if i == first_timed:
            for v in rec.values():
                v.clear()
        generator = torch.Generator("cpu").manual_seed(args.seed)
        capture["on"] = i == n_calls - 1
        sync()
        t = time.perf_counter()
        result = pipe(**call, generator=generator)
        sync()
        elapsed = time.perf_counter() - t
        if i == 0:
            first_run_s = elapsed
        if i >= first_timed:
            totals.append(elapsed)
            image = result.images[0]
        kind = "first run" if i == 0 else "warm-up" if i < first_timed else "timed run"
        print(f"  {setting}: {kind} {i + 1}/{n_calls}: {elapsed:.3f} s", flush=True)
    capture["on"] = False

    # --- the UNet alone, on one call's inputs of the last timed run --------------------------------------
    for h in hooks:
        h.remove()
    alone = []
    if args.unet_alone_runs > 0:
        if capture["args"] is None:
            raise SystemExit(f"pytorch_reference: {setting}: the last timed run made no UNet call to capture")
        with torch.no_grad():  # as the pipeline's __call__
            for j in range(2 + args.unet_alone_runs):
                sync()
                t = time.perf_counter()
                pipe.unet(*capture["args"], **capture["kwargs"])
                sync()
                if j >= 2:
                    alone.append(time.perf_counter() - t)
        print(f"  {setting}: unet alone: median {statistics.median(alone) * 1e3:.3f} ms over {len(alone)} "
              f"calls (in the pipeline: {statistics.median(rec['unet']) * 1e3:.3f} ms)", flush=True)

    ep = f"torch-{args.device}"
    image_name = f"pytorch-{ep}-{file_safe(setting)}.jpg"
    image.save(Path(args.out) / image_name, quality=90)
    peak_host_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    def med(xs):
        return statistics.median(xs) if xs else float("nan")

    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tag": args.tag,
        "model": args.model_name,
        "model_card": args.card,
        "pipeline": type(pipe).__name__,
        "runtime": "pytorch",
        "profile": setting,
        "passes": "",
        "precision": spec["precision"],
        "ep": ep,
        "ep_options": "",
        "onnxruntime_version": f"torch {torch.__version__}",
        "dfast_version": dfast_version(),
        "device": torch.cuda.get_device_name(device) if cuda else common.cpu_name(),
        "scheduler": type(pipe.scheduler).__name__,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "width": width,
        "height": height,
        "warmup_runs": args.warmup,
        "timed_runs": args.runs,
        "session_create_s": round(session_create_s, 4),
        "first_run_s": round(first_run_s, 4),
        "text_encode_ms": round(med(rec["text"]) * 1e3, 3),
        "unet_step_ms": round(med(rec["unet"]) * 1e3, 3),
        "unet_alone_ms": round(med(alone) * 1e3, 3) if alone else "",
        "vae_decode_ms": round(med(rec["vae"]) * 1e3, 3),
        "total_s": round(med(totals), 4),
        "total_min_s": round(min(totals), 4),
        "total_max_s": round(max(totals), 4),
        "peak_host_mb": round(peak_host_mb, 1),
        "peak_device_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else "",
        "image": image_name,
        "command": args.row_command,
    }


def unet_alone(args, setting: str) -> dict:
    """The UNet alone on the .npz inputs (see the module docs): compile and warm up, wait for --go, time."""
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    import gpu_check

    spec = parse_setting(setting)
    cuda = args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    weights = "random (seed 0)"
    if args.random_weights:
        import export_onnx

        unet = export_onnx.random_unet(args.arch)
        weights = f"export_onnx.random_unet({args.arch})"
    else:
        folder = Path(args.model) / "unet"
        if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
            unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
            weights = str(folder)
        else:
            config = json.loads((folder / "config.json").read_text())
            torch.manual_seed(0)
            unet = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    unet = unet.eval()
    unet.set_attn_processor(AttnProcessor2_0() if spec["sdpa"] else AttnProcessor())
    if spec["fused_qkv"]:
        unet.fuse_qkv_projections()
    unet = unet.to(device=device, dtype=dtype)
    if spec["compile"]:
        unet = unet.to(memory_format=torch.channels_last)
    config = dict(unet.config)
    if spec["compile"]:
        unet = torch.compile(unet, mode=args.compile_mode, fullgraph=True)
    sync()
    session_create_s = time.perf_counter() - t0

    path = Path(args.unet_alone_inputs)
    if not path.exists():
        gpu_check.write_inputs(config, args.width or config["sample_size"] * 8, args.height or config["sample_size"] * 8,
                               str(path), args.batch_size)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    as_tensor = lambda name, dt: torch.from_numpy(arrays[name]).to(device=device, dtype=dt)
    sample = as_tensor("sample", dtype)
    if spec["compile"]:
        sample = sample.contiguous(memory_format=torch.channels_last)
    timestep = as_tensor("timestep", torch.float32)
    context = as_tensor("encoder_hidden_states", dtype)
    added = None
    if "text_embeds" in arrays:
        added = {"text_embeds": as_tensor("text_embeds", dtype), "time_ids": as_tensor("time_ids", dtype)}

    def call():
        with torch.no_grad():
            return unet(sample, timestep, context, added_cond_kwargs=added, return_dict=False)[0]

    sync()
    t = time.perf_counter()
    call()
    sync()
    first_run_s = time.perf_counter() - t
    for _ in range(args.warmup):
        call()
    sync()
    print(f"  {setting}: UNet alone warmed up (first call {first_run_s:.1f} s)", flush=True)
    if args.ready:
        Path(args.ready).write_text(json.dumps({"first_run_s": first_run_s}))
    if args.go:
        waited = 0.0
        while not Path(args.go).exists():
            if waited >= args.go_timeout:
                raise SystemExit(f"pytorch_reference: no {args.go} after {args.go_timeout:.0f} s; nothing timed")
            time.sleep(0.2)
            waited += 0.2
    runs, y = [], None
    for _ in range(args.unet_alone_runs):
        sync()
        t = time.perf_counter()
        y = call()
        sync()
        runs.append(time.perf_counter() - t)
    if args.output:
        np.save(args.output, y.float().contiguous().cpu().numpy())
    return {
        "model": weights,
        "setting": setting,
        "ep": f"torch-{args.device}",
        "ep_options": {"compile_mode": args.compile_mode} if spec["compile"] else {},
        "device": torch.cuda.get_device_name(device) if cuda else common.cpu_name(),
        "torch_version": torch.__version__,
        "inputs": {k: list(v.shape) for k, v in arrays.items()},
        "session_create_s": session_create_s,
        "first_run_s": first_run_s,
        "median_s": statistics.median(runs),
        "min_s": min(runs),
        "runs_s": runs,
    }


def clone_inputs(x):
    """A copy of a module call's inputs: tensors cloned (same dtype, device, strides), containers rebuilt."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: clone_inputs(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone_inputs(v) for v in x)
    return x


def materialize(arch: str, dest: Path):
    """Builds export_onnx.py's random-weight pipeline (same seed, same weights) and saves it for loading."""
    import torch

    import export_onnx

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t = time.time()
    with tempfile.TemporaryDirectory() as vocab:
        export_onnx.tiny.write_clip_vocab(Path(vocab))
        pipe = export_onnx.random_pipeline(arch, Path(vocab))
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
    tmp.rename(dest)
    print(f"random-weight {arch} pipeline saved to {dest} in {time.time() - t:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------------------
# Parent: one subprocess per setting, rows collected into OUT/pytorch.csv.


def write_rows(path: Path, rows: list):
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            raise SystemExit(f"pytorch_reference: {path} exists with another header; move it away or pick "
                             "another --out")
        mode = "a"
    else:
        mode = "w"
    with open(path, mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if mode == "w":
            w.writeheader()
        for r in rows:
            w.writerow(r)


def command_for(setting: str) -> str:
    """The command line of this invocation, restricted to one setting."""
    argv, out, skip = sys.argv[1:], [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--settings":
            skip = True
            continue
        if a.startswith("--settings="):
            continue
        out.append(a)
    return shlex.join(["python3", sys.argv[0], *out, "--settings", setting])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("model")
    src.add_argument("--model", help="diffusers pipeline folder (PyTorch weights) or a Hub id in the local cache")
    src.add_argument("--random-weights", action="store_true",
                     help="export_onnx.py's random-weight pipeline of --arch (same seed, same weights)")
    src.add_argument("--arch", choices=["sd15", "sdxl", "ssd-1b"], help="architecture for --random-weights")
    src.add_argument("--weights-dir", type=Path,
                     help="--random-weights: where the built pipeline is saved and loaded from "
                          "(default OUT/.pytorch-random-ARCH, removed at the end; an existing one is reused and kept)")
    src.add_argument("--keep-weights", action="store_true", help="keep the default --weights-dir")
    src.add_argument("--model-name", help="`model` column (default: the folder's name, or ARCH-random); "
                                          "give the ONNX folder's name to group with dfast's rows")
    src.add_argument("--card", help="`model_card` column (default: recognised from the UNet's config by the "
                                    "model cards' [match.unet], as dfast does)")
    run = ap.add_argument_group("run")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                     help="comma list (default: %(default)s)")
    run.add_argument("--steps", type=int, default=30)
    run.add_argument("--batch-size", type=int, default=1)
    run.add_argument("--width", type=int, help="default: the UNet's sample_size times the VAE's scale factor")
    run.add_argument("--height", type=int)
    run.add_argument("--warmup", type=int, default=3,
                     help="whole-pipeline warm-up calls after the first run, which is timed on its own "
                          "(default 3, as the seed; as dfast bench)")
    run.add_argument("--runs", type=int, default=3, help="timed calls (default 3)")
    run.add_argument("--unet-alone-runs", type=int, default=10,
                     help="timed calls of the UNet alone on one captured call's inputs, after 2 untimed ones "
                          "(`unet_alone_ms`, the median; default 10; 0: skip, column empty)")
    run.add_argument("--prompt", default=PROMPT)
    run.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    run.add_argument("--scheduler", choices=sorted(common.SCHEDULER_CLASSES),
                     help="swap the scheduler class, keep its config")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--tag", default="")
    run.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    run.add_argument("--compile-mode", default="default",
                     help="torch.compile mode: default, reduce-overhead, max-autotune (the seed's), ...")
    run.add_argument("--inductor-tuning", action="store_true",
                     help="the seed's inductor config: conv_1x1_as_mm, coordinate-descent tuning, no epilogue fusion")
    run.add_argument("--upcast-vae", choices=["auto", "yes", "no"], default="auto",
                     help="fp32 VAE: auto = when the VAE config says force_upcast (SDXL) and the setting is not fp32")
    run.add_argument("--reuse-compile-cache", action="store_true",
                     help="keep torch's on-disk compile caches (default: a fresh, removed cache per setting, so "
                          "that first_run_s is a cold compile)")
    run.add_argument("--timeout", type=float, help="seconds per setting before its process is killed")
    alone = ap.add_argument_group("UNet alone on given inputs (see the module docs)")
    alone.add_argument("--unet-alone-inputs", type=Path, metavar="FILE.npz",
                       help="time the UNet alone on these inputs (written from its config when missing); one setting")
    alone.add_argument("--ready", type=Path, help="written once the warm-up is done")
    alone.add_argument("--go", type=Path, help="wait for this file before the timed calls")
    alone.add_argument("--go-timeout", type=float, default=600.0, help="seconds to wait for --go (default 600)")
    alone.add_argument("--json", type=Path, help="the timings (JSON, the keys of `dfast unet-step --json`)")
    alone.add_argument("--output", type=Path, metavar="FILE.npy", help="the last call's output, float32")
    ap.add_argument("--out", type=Path, help="output folder (pytorch.csv and the images); required but with "
                                             "--unet-alone-inputs")
    ap.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    ap.add_argument("--_model-dir", dest="model_dir", help=argparse.SUPPRESS)
    ap.add_argument("--_row-file", dest="row_file", help=argparse.SUPPRESS)
    ap.add_argument("--_materialize", dest="materialize", help=argparse.SUPPRESS)
    ap.add_argument("--_row-command", dest="row_command", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.materialize:
        materialize(args.arch, Path(args.materialize))
        return
    if args.child:
        row = run_setting(args, args.child, args.model_dir)
        Path(args.row_file).write_text(json.dumps(row))
        return

    if args.random_weights == bool(args.model):
        ap.error("give exactly one of --model or --random-weights")
    if args.random_weights and not args.arch:
        ap.error("--random-weights needs --arch")
    for name in ("steps", "batch_size", "runs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        ap.error("--warmup must be 0 or more")
    if args.unet_alone_runs < 0:
        ap.error("--unet-alone-runs must be 0 or more")
    for dim in (args.width, args.height):
        if dim is not None and (dim <= 0 or dim % 8):
            ap.error("--width and --height must be positive multiples of 8")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        try:
            parse_setting(s)
        except ValueError as e:
            ap.error(str(e))
    if args.unet_alone_inputs:
        if len(settings) != 1 or not args.json:
            ap.error("--unet-alone-inputs takes one setting (--settings) and --json")
        if args.unet_alone_runs < 1:
            ap.error("--unet-alone-runs must be at least 1 with --unet-alone-inputs")
    elif args.out is None:
        ap.error("--out is required")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("pytorch_reference: --device cuda, but torch sees no CUDA device here "
                             f"(torch {torch.__version__}); run it on a machine with an NVIDIA GPU")
    if any(parse_setting(s)["compile"] for s in settings) and not shutil.which(os.environ.get("CXX", "g++")):
        raise SystemExit("pytorch_reference: torch.compile needs a C++ compiler (g++) on PATH")

    if args.unet_alone_inputs:
        result = unet_alone(args, settings[0])
        args.json.write_text(json.dumps(result))
        print(f"pytorch_reference: {settings[0]}: UNet alone median {result['median_s'] * 1e3:.3f} ms over "
              f"{len(result['runs_s'])} calls (first call {result['first_run_s']:.1f} s)", flush=True)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    cleanup = None
    if args.random_weights:
        model_dir = args.weights_dir or args.out / f".pytorch-random-{args.arch}"
        if not (model_dir / "model_index.json").exists():
            print(f"building the random-weight {args.arch} pipeline (export_onnx.random_pipeline) ...", flush=True)
            subprocess.run([sys.executable, __file__, "--_materialize", str(model_dir), "--arch", args.arch,
                            "--out", str(args.out)], check=True)
            if args.weights_dir is None and not args.keep_weights:
                cleanup = model_dir
        model_name = args.model_name or f"{args.arch}-random"
        card = args.card if args.card is not None else args.arch
    else:
        model_dir = Path(args.model)
        if not model_dir.exists():
            model_dir = args.model  # a Hub id: diffusers looks in the local cache
        model_name = args.model_name or Path(args.model.rstrip("/")).name
        card = args.card
        if card is None:
            unet_cfg = Path(args.model) / "unet" / "config.json"
            card = common.match_card(json.loads(unet_cfg.read_text())) if unet_cfg.exists() else ""

    rows, failed = [], []
    try:
        for s in settings:
            print(f"pytorch_reference: {s} on {args.device} ...", flush=True)
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                row_file = f.name
            cmd = [sys.executable, __file__, *sys.argv[1:], "--_child", s, "--_model-dir", str(model_dir),
                   "--_row-file", row_file, "--_row-command", command_for(s),
                   "--model-name", model_name, "--card", card]
            # argparse keeps the last --model-name/--card, so these override the user's (same values).
            env = dict(os.environ)
            cache = None
            if not args.reuse_compile_cache:
                # A cold compile per setting: inductor's and Triton's on-disk caches would otherwise carry
                # compiled kernels from one run (or setting) to the next and shrink first_run_s.
                cache = tempfile.mkdtemp(prefix="pytorch-reference-inductor-")
                env.update(TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
            try:
                subprocess.run(cmd, check=True, timeout=args.timeout, env=env)
                row = json.loads(Path(row_file).read_text())
                rows.append(row)
                write_rows(args.out / CSV_NAME, [row])
                alone = row["unet_alone_ms"]
                alone = f" (alone {alone:.1f} ms)" if alone != "" else ""
                print(f"pytorch_reference: {s}: unet step {row['unet_step_ms']:.1f} ms{alone}, vae decode "
                      f"{row['vae_decode_ms']:.1f} ms, total {row['total_s']:.3f} s (first run "
                      f"{row['first_run_s']:.1f} s)", flush=True)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                failed.append(s)
                print(f"pytorch_reference: setting {s} failed: {e}", file=sys.stderr, flush=True)
            finally:
                Path(row_file).unlink(missing_ok=True)
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
    finally:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
    print(f"pytorch_reference: {len(rows)} row(s) written to {args.out / CSV_NAME}")
    if failed:
        raise SystemExit(f"pytorch_reference: failed setting(s): {', '.join(failed)}")


if __name__ == "__main__":
    main()
