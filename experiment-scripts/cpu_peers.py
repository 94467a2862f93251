#!/usr/bin/env python3
"""One UNet step of the same UNet on this CPU, timed for several runtimes ("peers") and for dfast, side by
side, with each output's relative L2 error against PyTorch fp32 on the same inputs.

  # the SD1.5-size random-weight exports (export_onnx.py / pytorch_reference.py's --weights-dir)
  python experiment-scripts/cpu_peers.py --out benchmarks/sd15-cpu-peers \\
      --dfast baseline=~/.cache/dfast/exports/sd15-random:cpu --profile-ort
  # the tiny pipeline, for checking the script (builds its own PyTorch twin of the config, see --arch)
  python experiment-scripts/cpu_peers.py --arch tiny --onnx models/tiny-sd --out /tmp/peers-tiny

One call = the classifier-free-guidance batch (2) of the UNet at its config's sample_size (SD1.5: 64x64
latents = 512x512 images), 77 text tokens of cross_attention_dim. The inputs are made once: sample ~ N(0,1)
[2,C,H,W] f32 (numpy, seed 0); encoder_hidden_states [2,77,D] f32: with --calibration, the text encoder's
output in the first calibration sample (a real prompt and its negative, as the pipeline feeds them), else
0.5 N(0,1); one file per timestep of TIMESTEPS (999, 500, 20), OUT/inputs-tT.npz (keys sample, timestep,
encoder_hidden_states), so other programs run the very same inputs. Every row is timed at the first timestep
(999) and run once more at each of the others; its error is measured at all three. Each ONNX peer feeds the
timestep as its model declares it (the torchscript SD1.5 export: int64 [batch]; models/tiny-sd: a 0-d float).

Calibration (--calibration DIR): the int8 peers are calibrated on the UNet inputs that dfast recorded while
its fp32 pipeline generated the calibration prompts, `dfast convert --profile int8-mixed --calibrate N
--calibrate-steps S --save-calibration-inputs DIR` (DIR/sample-NNN.npz, one per UNet call): the same prompts,
latents and pipeline as dfast's own int8 rows, which come from that very conversion.

Peers (--peers, comma list, default all; each runs in a fresh process, one after the other, and a peer that
cannot run gets a row that says why):
  torch-fp32          PyTorch fp32, SDPA (AttnProcessor2_0), eager; its output is the reference
  torch-bf16          PyTorch bf16, SDPA, eager
  torch-bf16-compile  PyTorch bf16, SDPA, fused QKV (unet.fuse_qkv_projections()), channels_last,
                      torch.compile(fullgraph, mode default): the seed's CPU recipe (compile in the warm-up)
  ort-fp32            ONNX Runtime CPU EP on unet/model.onnx (default session options)
  ort-int8            ONNX Runtime CPU EP on quantize_dynamic(MatMul+Conv, per_channel, QInt8 weights), a naive
                      baseline; the quantized model is cached in OUT/ort-int8/unet/
  ov-f32, ov-bf16     OpenVINO CPU, compile_model(..., {"INFERENCE_PRECISION_HINT": "f32" | "bf16"}) on the ONNX
                      file, reshaped to the static input shapes
  ov-nncf-int8        NNCF post-training quantization of that reshaped model, nncf.quantize(model_type=
                      TRANSFORMER, subset_size = all calibration samples): SmoothQuant, fast bias correction,
                      int8 on Conv and MatMul (NNCF's defaults for transformers); then compiled with the bf16
                      hint where the CPU has native bf16, else f32 (OpenVINO's documented best)
  ov-split            not a peer's configuration: ov-f32 with the batch run as one-row requests at once, one
                      OpenVINO stream each (what dfast's `streams` session option does), to show what that part
                      of dfast's step is worth; a "reference" row, left out of the fastest-peer ratio
  ov-hybrid-int8      optimum-intel's hybrid recipe on the same model, through optimum-intel's own functions
                      (_get_hybrid_mixed_quantization_config + _mixed_quantization, what
                      OVWeightQuantizationConfig(bits=8, quant_method="hybrid", dataset=...) runs): int8 weights
                      and activations on Conv, int8 weights only on MatMul, SmoothQuant off; same hint rule
                      The int8 peers need --calibration; their models are cached in OUT/<peer>/ (by source,
                      calibration set and versions) and reused.
dfast rows: --dfast NAME=FOLDER[:EP][;KEY=VALUE...] (repeatable; FOLDER empty = --onnx; each KEY=VALUE an
--ep-option of that row, e.g. `int8=DIR:openvino;precision=bf16`) runs
  DFAST unet-step FOLDER --ep EP --inputs OUT/inputs-t999.npz --output OUT/outputs/dfast-NAME-t999.npy
        --warmup W --runs R --json
and reads `median_s` / `min_s` from the JSON object on its last stdout line and the output from the .npy;
then once more with --warmup 0 --runs 1 for each other timestep (a process each).
The error reference is --reference (default torch-fp32, else ort-fp32), e.g. ov-f32 where torch does not run.
Each row's notes hold the machine's load averages (/proc/loadavg) just before it: on a shared machine other
work skews the timings.

Timing: --warmup calls (default 1; the first also holds torch.compile's compile), then --runs timed calls
(default 3); median and min of the timed ones. Threads: every runtime's default (all cores) unless
--threads N (torch.set_num_threads, ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS; not passed to
dfast).

Output in OUT: cpu_peers.md, cpu_peers.csv (configuration, kind, median_s, min_s, ratio to the fastest peer,
relative L2 and max abs vs fp32 at each timestep, notes), cpu_peers.json (rows + machine + versions),
inputs-tT.npz, outputs/<row>-tT.npy,
peers/<row>.json, logs/<row>.log; with --profile-ort also ort_profile_fp32.md (and ort_profile_int8.md when
ort-int8 runs): ONNX Runtime's profiler over one call, time per op type.

--arch tiny: the ONNX folder's unet/config.json is built in PyTorch with torch.manual_seed(0) (as
make_tiny_pipelines.py builds it) and exported again (make_tiny_pipelines.export_unet, checked against
torch) into OUT/tiny-export/{pytorch,onnx}, so that both sides hold the same weights whatever the committed
export holds; the peers then run those folders. --arch sd15 (default): --onnx and --pytorch are used as given.

Random weights: latency depends on shapes, not on weight values; the errors compare runtimes on the same
random weights, they say nothing about image quality.
"""

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np

import common  # a sibling module (this script's folder is on sys.path), as make_tiny_pipelines below

ROOT = common.ROOT

EXPORTS = Path(os.environ.get("EXPORTS") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
               / "dfast" / "exports")
PEERS = ["torch-fp32", "torch-bf16", "torch-bf16-compile", "ort-fp32", "ort-int8", "ov-f32", "ov-bf16",
         "ov-nncf-int8", "ov-hybrid-int8", "ov-split"]
# Rows that are neither a peer's configuration nor dfast: written by this script to explain a result, and left
# out of the fastest-peer ratio.
REFERENCE_ROWS = {"ov-split"}
LABELS = {
    "torch-fp32": "PyTorch {torch} fp32, SDPA, eager",
    "torch-bf16": "PyTorch {torch} bf16, SDPA, eager",
    "torch-bf16-compile": "PyTorch {torch} bf16, SDPA, fused QKV, channels_last, torch.compile",
    "ort-fp32": "ONNX Runtime {onnxruntime} CPU EP fp32",
    "ort-int8": "ONNX Runtime {onnxruntime} CPU EP, quantize_dynamic int8 (MatMul+Conv, per-channel)",
    "ov-f32": "OpenVINO {openvino} CPU, f32 hint",
    "ov-bf16": "OpenVINO {openvino} CPU, bf16 hint",
    "ov-nncf-int8": "OpenVINO {openvino} CPU, NNCF {nncf} PTQ int8 (TRANSFORMER: SmoothQuant, bias correction)",
    "ov-hybrid-int8": "OpenVINO {openvino} CPU, optimum-intel {optimum-intel} hybrid int8 (Conv int8, MatMul "
                      "int8 weights)",
    "ov-split": "OpenVINO {openvino} CPU, f32 hint, batch split into one-row requests run at once (not a peer setting)",
}
# Timesteps of the error check; every row is timed at the first.
TIMESTEPS = (999, 500, 20)
REFERENCE = "torch-fp32"
EPS = ("cpu", "cuda", "tensorrt", "openvino")
SEQ = 77
BATCH = 2


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_info() -> dict:
    name, flags = common.cpu_name(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16"]
    return {"cpu": name, "cores": os.cpu_count(), "memory_gb": mem_gb,
            "isa": [f for f in wanted if f in flags],
            "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags)}


def rel_l2(y: np.ndarray, ref: np.ndarray) -> float:
    y, ref = y.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def unet_config(onnx_dir: Path) -> dict:
    cfg = onnx_dir / "unet" / "config.json"
    if not cfg.exists():
        raise SystemExit(f"cpu_peers: {cfg} is missing (--onnx must be a pipeline folder with unet/)")
    return json.loads(cfg.read_text())


def inputs_path(out: Path, t: int) -> Path:
    return out / f"inputs-t{t}.npz"


def output_path(out: Path, row: str, t: int) -> Path:
    return out / "outputs" / f"{row}-t{t}.npy"


def calibration_files(folder) -> list:
    """The sample-NNN.npz files of a --calibration folder, in order; SystemExit when there are none."""
    files = sorted(Path(folder).glob("sample-*.npz"))
    if not files:
        raise SystemExit(f"cpu_peers: --calibration {folder} holds no sample-NNN.npz (write them with dfast convert "
                         "--save-calibration-inputs)")
    return files


def make_inputs(cfg: dict, out: Path, calibration) -> dict:
    """One input set per timestep of TIMESTEPS, written to OUT/inputs-tT.npz; returns {t: inputs}."""
    h = w = int(cfg["sample_size"])
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((BATCH, int(cfg["in_channels"]), h, w), dtype=np.float32)
    if calibration:
        with np.load(calibration_files(calibration)[0]) as z:
            ehs = z["encoder_hidden_states"].astype(np.float32)
        if ehs.shape != (BATCH, SEQ, int(cfg["cross_attention_dim"])):
            raise SystemExit(f"cpu_peers: the calibration samples' encoder_hidden_states are {list(ehs.shape)}, "
                             f"not [{BATCH}, {SEQ}, {cfg['cross_attention_dim']}] (batch 2 = guidance)")
    else:
        ehs = rng.standard_normal((BATCH, SEQ, int(cfg["cross_attention_dim"])), dtype=np.float32) * np.float32(0.5)
    sets = {}
    for t in TIMESTEPS:
        sets[t] = {"sample": sample, "timestep": np.full((BATCH,), float(t), dtype=np.float32),
                   "encoder_hidden_states": ehs}
        np.savez(inputs_path(out, t), **sets[t])
    return sets


def load_inputs(out: Path) -> dict:
    """{t: inputs} as make_inputs wrote them."""
    sets = {}
    for t in TIMESTEPS:
        with np.load(inputs_path(out, t)) as z:
            sets[t] = {k: z[k] for k in ("sample", "timestep", "encoder_hidden_states")}
    return sets


# ----------------------------------------------------------------------------------------------------------
# --arch tiny: a PyTorch twin of the ONNX folder's UNet, exported again so both sides share the weights.


def make_tiny_twin(onnx_dir: Path, dest: Path) -> tuple:
    import onnx
    import torch
    from diffusers import UNet2DConditionModel

    import make_tiny_pipelines as tiny

    cfg = unet_config(onnx_dir)
    declared = onnx_inputs(onnx_dir / "unet" / "model.onnx")
    ts_dtype = torch.int64 if declared["timestep"][0] == onnx.TensorProto.INT64 else torch.float32
    ts_dims = declared["timestep"][1]
    ts_shape = "scalar" if not ts_dims else ("one" if ts_dims == [1] else "batch")
    shutil.rmtree(dest, ignore_errors=True)
    pt_dir, ox_dir = dest / "pytorch", dest / "onnx"
    torch.manual_seed(0)  # as make_tiny_pipelines.build_sd: the UNet is the first module built after the seed
    unet = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")}).eval()
    unet.save_pretrained(pt_dir / "unet", safe_serialization=True)
    # The ONNX side: the source folder's other files (model_index.json, scheduler, ...) and a fresh unet/.
    shutil.copytree(onnx_dir, ox_dir, ignore=shutil.ignore_patterns("unet"))
    tiny.export_unet(unet, ox_dir / "unet", False, ts_dtype, ts_shape)  # asserts ORT == torch (rel L2 < 1e-5)
    return ox_dir, pt_dir


# ----------------------------------------------------------------------------------------------------------
# ONNX helpers


def onnx_inputs(path: Path) -> dict:
    """name -> (elem_type, [dims]) of the graph inputs, without loading external data."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    res = {}
    for i in m.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        res[i.name] = (t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim])
    return res


def onnx_feeds(path: Path, inputs: dict) -> tuple:
    """Feeds in the dtypes and ranks the model declares; a note on the timestep feed."""
    import onnx

    declared = onnx_inputs(path)
    feeds = {}
    note = ""
    for name, (elem, dims) in declared.items():
        if name not in inputs:
            raise RuntimeError(f"{path} wants an input '{name}' this script does not make (SD1.5-style UNets only)")
        a = inputs[name]
        np_type = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if name == "timestep":
            if len(dims) == 0:
                a = a.reshape(-1)[0].reshape(())
            note = f"timestep fed as {np.dtype(np_type).name} {list(a.shape)}"
        feeds[name] = np.array(a, dtype=np_type, order="C")  # (np.ascontiguousarray makes a 0-d array 1-d)
    return feeds, note


def onnx_model_path(onnx_dir: Path) -> Path:
    p = onnx_dir / "unet" / "model.onnx"
    if not p.exists():
        raise RuntimeError(f"{p} does not exist")
    return p


# ----------------------------------------------------------------------------------------------------------
# Child: one peer in this process.


def timed_calls(fn, warmup: int, runs: int, log) -> dict:
    first = None
    for i in range(warmup):
        t = time.perf_counter()
        fn()
        el = time.perf_counter() - t
        first = el if first is None else first
        log(f"warm-up {i + 1}/{warmup}: {el:.3f} s")
    times, y = [], None
    for i in range(runs):
        t = time.perf_counter()
        y = fn()
        el = time.perf_counter() - t
        times.append(el)
        log(f"timed {i + 1}/{runs}: {el:.3f} s")
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times), "first_call_s": first,
            "output": y}


def run_torch(args, peer: str, log) -> dict:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = peer != "torch-fp32"
    compiled = peer == "torch-bf16-compile"
    dtype = torch.bfloat16 if bf16 else torch.float32
    notes = [f"torch threads {torch.get_num_threads()}"]
    if compiled and not shutil.which(os.environ.get("CXX", "g++")):
        raise RuntimeError("torch.compile on the CPU needs a C++ compiler (g++) on PATH")
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(args.pytorch, subfolder="unet", torch_dtype=dtype).eval()
    unet.set_attn_processor(AttnProcessor2_0())
    if compiled:
        unet.fuse_qkv_projections()
        unet.to(memory_format=torch.channels_last)
        unet = torch.compile(unet, fullgraph=True)
    load_s = time.perf_counter() - t0

    def infer(inputs):
        sample = torch.from_numpy(inputs["sample"]).to(dtype)
        if compiled:
            sample = sample.contiguous(memory_format=torch.channels_last)
        timestep = torch.from_numpy(inputs["timestep"])
        ehs = torch.from_numpy(inputs["encoder_hidden_states"]).to(dtype)
        with torch.inference_mode():
            return unet(sample, timestep, ehs, return_dict=False)[0].float().contiguous().numpy()

    def after(r):
        extra = []
        if bf16 and not cpu_info()["native_bf16"]:
            extra.append("no avx512_bf16/amx_bf16 on this CPU")
        if compiled:
            extra.append(f"first call (compile) {r['first_call_s']:.1f} s" if r["first_call_s"] else
                         "no warm-up: the first timed call compiled")
        return extra

    return {"infer": infer, "load_s": load_s, "notes": notes, "after": after}


def ort_session(path: Path, threads, profile_prefix=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def quantized_model(args, src: Path, log) -> tuple:
    """quantize_dynamic of src into OUT/ort-int8/unet/, reused while the stamp matches."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dest_dir = Path(args.out) / "ort-int8" / "unet"
    dest = dest_dir / "model.onnx"
    data = src.parent / "model.onnx_data"
    stamp = {"source": str(src.resolve()), "size": src.stat().st_size, "mtime": src.stat().st_mtime,
             "data_size": data.stat().st_size if data.exists() else 0,
             "options": "MatMul,Conv per_channel QInt8", "onnxruntime": version("onnxruntime")}
    stamp_file = dest_dir / "quantize_stamp.json"
    if dest.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        log(f"reusing the quantized model {dest}")
        return dest, None
    shutil.rmtree(dest_dir, ignore_errors=True)
    dest_dir.mkdir(parents=True)
    log(f"quantize_dynamic {src} -> {dest} ...")
    t = time.perf_counter()
    quantize_dynamic(src, dest, op_types_to_quantize=["MatMul", "Conv"], per_channel=True,
                     weight_type=QuantType.QInt8, use_external_data_format=True)
    took = time.perf_counter() - t
    if (src.parent / "config.json").exists():
        shutil.copy(src.parent / "config.json", dest_dir / "config.json")
    stamp_file.write_text(json.dumps(stamp))
    log(f"quantized in {took:.0f} s")
    return dest, took


def run_ort(args, peer: str, sets: dict, log) -> dict:
    src = onnx_model_path(Path(args.onnx))
    notes = []
    path = src
    if peer == "ort-int8":
        path, took = quantized_model(args, src, log)
        notes.append(f"quantized in {took:.0f} s" if took is not None else "quantized model reused from cache")
    notes.append(onnx_feeds(path, sets[TIMESTEPS[0]])[1])
    t0 = time.perf_counter()
    sess = ort_session(path, args.threads)
    load_s = time.perf_counter() - t0
    threads = sess.get_session_options().intra_op_num_threads
    notes.insert(0, f"intra-op threads {threads or 'default'}")

    def after(r):
        if not args.profile_ort:
            return []
        tag = "fp32" if peer == "ort-fp32" else "int8"
        try:
            return [f"profile: {profile_ort(args, path, onnx_feeds(path, sets[TIMESTEPS[0]])[0], tag, log).name}"]
        except Exception as e:  # noqa: BLE001 -- any failure of the profiler: the timing row stands without it
            return [f"profiling failed: {e}"]

    return {"infer": lambda inputs: sess.run(None, onnx_feeds(path, inputs)[0])[0], "load_s": load_s,
            "notes": notes, "after": after}


def profile_ort(args, path: Path, feeds: dict, tag: str, log) -> Path:
    """One warm-up and one profiled call in a profiling session; time per op type of the last run."""
    out = Path(args.out)
    prof_dir = out / "profiles"
    prof_dir.mkdir(exist_ok=True)
    sess = ort_session(path, args.threads, prof_dir / f"ort_{tag}")
    sess.run(None, feeds)
    t = time.perf_counter()
    sess.run(None, feeds)
    wall = time.perf_counter() - t
    prof = Path(sess.end_profiling())
    del sess
    events = json.loads(prof.read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not runs:
        raise RuntimeError(f"{prof}: no model_run event")
    last = runs[-1]
    lo, hi = last["ts"], last["ts"] + last["dur"]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and lo <= e["ts"] <= hi]
    by_op, by_node = {}, []
    for e in nodes:
        op = e.get("args", {}).get("op_name", "?")
        d = by_op.setdefault(op, {"us": 0, "n": 0})
        d["us"] += e["dur"]
        d["n"] += 1
        by_node.append((e["dur"], e["name"][: -len("_kernel_time")], op))
    total = sum(d["us"] for d in by_op.values()) or 1
    lines = [
        f"# ONNX Runtime CPU EP profile: {tag} UNet, one call",
        "",
        f"Model: `{path}`. Inputs: {', '.join(f'{k} {list(v.shape)} {v.dtype}' for k, v in feeds.items())}.",
        (f"One warm-up call, then the profiled call: wall {wall * 1e3:.1f} ms, model_run {last['dur'] / 1e3:.1f} ms, "
        f"sum of node kernel times {total / 1e3:.1f} ms ({len(nodes)} node runs). Threads: "
        f"{args.threads or 'ONNX Runtime default'}. Raw profile: `{prof.relative_to(out)}`."),
        (f"Date {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {cpu_info()['cpu']}, {os.cpu_count()} cores, "
        f"onnxruntime {version('onnxruntime')}."),
        "",
        "| op type | total ms | nodes | share | ms per node |",
        "|---|---:|---:|---:|---:|",
    ]
    for op, d in sorted(by_op.items(), key=lambda kv: -kv[1]["us"]):
        lines.append(f"| {op} | {d['us'] / 1e3:.2f} | {d['n']} | {100 * d['us'] / total:.1f}% | "
                     f"{d['us'] / 1e3 / d['n']:.3f} |")
    lines += ["", "Slowest 25 nodes:", "", "| node | op type | ms | share |", "|---|---|---:|---:|"]
    for us, name, op in sorted(by_node, reverse=True)[:25]:
        lines.append(f"| `{name}` | {op} | {us / 1e3:.2f} | {100 * us / total:.1f}% |")
    md = out / f"ort_profile_{tag}.md"
    md.write_text("\n".join(lines) + "\n")
    log(f"profile written to {md}")
    return md


def run_openvino(args, peer: str, sets: dict, log) -> dict:
    import openvino as ov

    path = onnx_model_path(Path(args.onnx))
    native_bf16 = cpu_info()["native_bf16"]
    hint = {"ov-bf16": "bf16", "ov-f32": "f32"}.get(peer, "bf16" if native_bf16 else "f32")
    feeds, note = onnx_feeds(path, sets[TIMESTEPS[0]])
    notes = [note, "static input shapes (reshaped)"]
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    t0 = time.perf_counter()
    model = core.read_model(str(path))
    # ov-split: the batch of BATCH rows as BATCH requests of one row, in as many streams.
    split = peer == "ov-split"
    model.reshape({name: ov.PartialShape([1, *a.shape[1:]] if split and a.ndim else list(a.shape))
                   for name, a in feeds.items()})
    if peer in ("ov-nncf-int8", "ov-hybrid-int8"):
        model, note = quantized_ov_model(args, peer, path, model, feeds, log)
        notes.append(note)
        t0 = time.perf_counter()  # load_s: reading and compiling the quantized model, not quantizing it
    cfg = {"INFERENCE_PRECISION_HINT": hint}
    if args.threads:
        cfg["INFERENCE_NUM_THREADS"] = args.threads
    if split:
        cfg["NUM_STREAMS"] = BATCH
        notes.append(f"the batch as {BATCH} requests of one row run at once, {BATCH} streams")
    compiled = core.compile_model(model, "CPU", cfg)
    load_s = time.perf_counter() - t0
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    got = got.to_string() if hasattr(got, "to_string") else str(got)
    notes.insert(0, f"compiled precision {got}, threads {compiled.get_property('INFERENCE_NUM_THREADS')}")
    if hint == "bf16" and not native_bf16:
        notes.append(f"no avx512_bf16/amx_bf16 on this CPU (OpenVINO CPU capabilities: {','.join(caps)}): "
                     "bf16 is emulated or ignored (see the compiled precision)")
    req = compiled.create_infer_request()
    out_port = compiled.output(0)

    def infer(inputs):
        return np.array(req.infer(onnx_feeds(path, inputs)[0])[out_port], dtype=np.float32)

    if split:
        reqs = [compiled.create_infer_request() for _ in range(BATCH)]

        def infer(inputs):
            fed = onnx_feeds(path, inputs)[0]
            for i, r in enumerate(reqs):
                r.start_async({k: a[i:i + 1] if a.ndim else a for k, a in fed.items()})
            for r in reqs:
                r.wait()
            return np.concatenate([np.array(r.get_output_tensor(0).data, dtype=np.float32) for r in reqs])

    return {"infer": infer, "load_s": load_s, "notes": notes}


def quantized_ov_model(args, peer: str, path: Path, model, feeds: dict, log) -> tuple:
    """The reshaped OpenVINO `model` quantized by the peer's own recipe on the --calibration samples, cached in
    OUT/<peer>/unet.xml while the stamp (source, calibration set, versions) matches; (model, note)."""
    import openvino as ov

    if not args.calibration:
        raise RuntimeError(f"{peer} needs --calibration (the UNet inputs dfast recorded)")
    files = calibration_files(args.calibration)
    dest_dir = Path(args.out) / peer
    dest = dest_dir / "unet.xml"
    data = path.parent / "model.onnx_data"
    stamp = {"source": str(path.resolve()), "size": path.stat().st_size, "mtime": path.stat().st_mtime,
             "data_size": data.stat().st_size if data.exists() else 0,
             "calibration": [[f.name, f.stat().st_size, f.stat().st_mtime] for f in files],  # lists: JSON's own
             "shapes": {k: list(v.shape) for k, v in feeds.items()},
             "versions": {p: version(p) for p in ("openvino", "nncf", "optimum-intel")}}
    stamp_file = dest_dir / "stamp.json"
    if dest.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        log(f"reusing the quantized model {dest}")
        return ov.Core().read_model(str(dest)), f"{peer} model reused from {dest_dir.name}/"
    import nncf

    samples = []
    for f in files:
        with np.load(f) as z:
            missing = [k for k in feeds if k not in z.files]
            if missing:
                raise RuntimeError(f"{f} lacks the input(s) {', '.join(missing)}")
            samples.append(onnx_feeds(path, {k: z[k] for k in feeds})[0])
    log(f"{peer}: quantizing on {len(samples)} calibration samples from {args.calibration} ...")
    t = time.perf_counter()
    if peer == "ov-nncf-int8":
        q = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(samples))
    else:
        from optimum.intel import OVWeightQuantizationConfig
        from optimum.intel.openvino.quantization import _get_hybrid_mixed_quantization_config, _mixed_quantization

        config = _get_hybrid_mixed_quantization_config(model, OVWeightQuantizationConfig(bits=8,
                                                                                        num_samples=len(samples)))
        q = _mixed_quantization(model, config, nncf.Dataset(samples))
    took = time.perf_counter() - t
    shutil.rmtree(dest_dir, ignore_errors=True)
    dest_dir.mkdir(parents=True)
    ov.save_model(q, str(dest), compress_to_fp16=False)
    stamp_file.write_text(json.dumps(stamp))
    log(f"quantized in {took:.0f} s -> {dest}")
    return q, f"quantized on {len(samples)} calibration samples in {took:.0f} s"


def peak_rss_mb():
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def run_child(args):
    peer = args.one
    out = Path(args.out)
    log = lambda msg: print(f"  [{peer}] {msg}", flush=True)
    rec = {"row": peer, "kind": "reference" if peer in REFERENCE_ROWS else "peer", "status": "failed", "notes": []}
    try:
        sets = load_inputs(out)
        if peer.startswith("torch-"):
            prep = run_torch(args, peer, log)
        elif peer.startswith("ort-"):
            prep = run_ort(args, peer, sets, log)
        elif peer.startswith("ov-"):
            prep = run_openvino(args, peer, sets, log)
        else:
            raise RuntimeError(f"unknown peer {peer}")
        infer = prep["infer"]
        r = timed_calls(lambda: infer(sets[TIMESTEPS[0]]), args.warmup, args.runs, log)
        outputs = {TIMESTEPS[0]: r.pop("output")}
        for t in TIMESTEPS[1:]:
            outputs[t] = infer(sets[t])
        notes = prep["notes"] + (prep["after"](r) if "after" in prep else [])
        for t, y in outputs.items():
            np.save(output_path(out, peer, t), np.ascontiguousarray(y, dtype=np.float32))
        rec.update(r, status="ok", output_shape=list(outputs[TIMESTEPS[0]].shape), peak_rss_mb=peak_rss_mb(),
                   load_s=prep["load_s"], notes=notes)
    except BaseException as e:
        traceback.print_exc()
        rec["reason"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:400]
        if isinstance(e, KeyboardInterrupt):
            raise
    finally:
        (out / "peers" / f"{peer}.json").write_text(json.dumps(rec, indent=1))


# ----------------------------------------------------------------------------------------------------------
# Parent


def run_logged(cmd: list, log_path: Path, timeout, env=None) -> tuple:
    """Runs cmd, echoing and logging its output; (returncode or None on timeout, last non-empty lines)."""
    tail = []
    with open(log_path, "w") as logf:
        logf.write("$ " + " ".join(map(str, cmd)) + "\n")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             errors="replace")
        t0 = time.time()
        rc = None
        try:
            for line in p.stdout:
                logf.write(line)
                sys.stdout.write(line)
                sys.stdout.flush()
                if line.strip():
                    tail = (tail + [line.rstrip()])[-20:]
                if timeout and time.time() - t0 > timeout:
                    raise subprocess.TimeoutExpired(cmd, timeout)
            rc = p.wait(timeout=(timeout - (time.time() - t0)) if timeout else None)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            tail.append(f"killed after the --timeout of {timeout} s")
    return rc, tail


def run_peer(args, peer: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", peer, "--onnx", str(args.onnx), "--pytorch", str(args.pytorch),
           "--out", str(out), "--warmup", str(args.warmup), "--runs", str(args.runs)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.profile_ort:
        cmd += ["--profile-ort"]
    if args.calibration:
        cmd += ["--calibration", str(args.calibration)]
    rec_path = out / "peers" / f"{peer}.json"
    rec_path.unlink(missing_ok=True)
    env = dict(os.environ)
    # torch.compile's kernels are cached beside the results (a rerun compiles warm; first_call_s says which).
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out / ".inductor-cache"))
    rc, tail = run_logged(cmd, out / "logs" / f"{peer}.log", args.timeout, env)
    if rec_path.exists():
        rec = json.loads(rec_path.read_text())
        if rc not in (0, None) and rec.get("status") == "ok":
            rec["notes"].append(f"process exit status {rc} after writing its result")
        return rec
    return {"row": peer, "kind": "reference" if peer in REFERENCE_ROWS else "peer", "status": "failed", "notes": [],
            "reason": f"process ended (exit status {rc}) without a result: {tail[-1] if tail else 'no output'}"}


def parse_dfast(spec: str, default_onnx: Path) -> tuple:
    if "=" not in spec:
        raise SystemExit(f"cpu_peers: --dfast {spec}: expected NAME=FOLDER[:EP][;KEY=VALUE...]")
    spec, *options = spec.split(";")
    bad = [o for o in options if "=" not in o]
    if bad:
        raise SystemExit(f"cpu_peers: --dfast option(s) {', '.join(bad)}: expected KEY=VALUE (an --ep-option)")
    name, rest = spec.split("=", 1)
    ep = "cpu"
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        if tail in EPS:
            rest, ep = head, tail
    folder = Path(os.path.expanduser(rest)) if rest else default_onnx
    return name.strip(), folder, ep, options


def run_dfast(args, name: str, folder: Path, ep: str, out: Path, options=()) -> dict:
    row = f"dfast-{name}"
    rec = {"row": row, "kind": "dfast", "status": "failed", "notes": [f"{folder} on the {ep} EP"],
           "label": f"dfast {name} ({ep} EP)"}
    if options:
        rec["notes"].append("--ep-option " + " ".join(options))
    bin_path = Path(os.path.expanduser(args.dfast_bin))
    if not bin_path.is_absolute() and not bin_path.exists() and (ROOT / bin_path).exists():
        bin_path = ROOT / bin_path
    if not (bin_path.exists() and os.access(bin_path, os.X_OK)):
        rec["reason"] = f"dfast binary {bin_path} not found or not executable (--dfast-bin)"
        return rec
    log_path = out / "logs" / f"{row}.log"
    log_path.write_text("")
    js = None
    # Timed at the first timestep; one more call (a process each) at every other timestep, for the error.
    for t in TIMESTEPS:
        y_path = output_path(out, row, t)
        y_path.unlink(missing_ok=True)
        timed = t == TIMESTEPS[0]
        cmd = [str(bin_path), "unet-step", str(folder), "--ep", ep, "--inputs", str(inputs_path(out, t)),
               "--output", str(y_path), "--warmup", str(args.warmup if timed else 0),
               "--runs", str(args.runs if timed else 1), "--json"]
        for o in options:
            cmd += ["--ep-option", o]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, errors="replace", check=False)
        except subprocess.TimeoutExpired:
            rec["reason"] = f"dfast unet-step killed after the --timeout of {args.timeout} s"
            return rec
        with open(log_path, "a") as logf:
            logf.write("$ " + " ".join(cmd) + f"\n--- exit status {p.returncode}\n--- stdout\n{p.stdout}"
                       f"\n--- stderr\n{p.stderr}\n")
        sys.stdout.write(p.stderr[-2000:])
        if p.returncode != 0:
            last = [line for line in p.stderr.splitlines() if line.strip()] or \
                   [line for line in p.stdout.splitlines() if line.strip()] or [f"exit status {p.returncode}"]
            rec["reason"] = f"dfast unet-step failed: {last[-1].strip()}"[:400]
            return rec
        if not y_path.exists():
            rec["reason"] = f"dfast unet-step wrote no {y_path.name}"
            return rec
        if timed:
            lines = [line for line in p.stdout.splitlines() if line.strip()]
            try:
                js = json.loads(lines[-1])
                rec.update(median_s=float(js["median_s"]), min_s=float(js["min_s"]), dfast_json=js)
            except (IndexError, ValueError, KeyError, TypeError) as e:
                rec["reason"] = f"dfast unet-step: no JSON with median_s/min_s on its last stdout line ({e})"
                return rec
            if "runs_s" in js:
                rec["times_s"] = js["runs_s"]
    y = np.load(output_path(out, row, TIMESTEPS[0]))
    rec.update(status="ok", output_shape=list(y.shape))
    for k in ("session_create_s", "load_s", "profile", "passes", "threads"):
        if k in js:
            rec["notes"].append(f"{k} {js[k]}")
    if js.get("ep_options"):
        rec["notes"].append("session options " + " ".join(f"{k}={v}" for k, v in js["ep_options"].items()))
    return rec


def load_average() -> str:
    """The machine's 1/5/15-minute load averages (the machine may be shared: other work skews timings)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def write_tables(out: Path, rows: list, meta: dict):
    ok_peers = [r for r in rows if r["kind"] == "peer" and r["status"] == "ok"]  # reference rows are not peers
    fastest = min(ok_peers, key=lambda r: r["median_s"]) if ok_peers else None
    for r in rows:
        r["ratio"] = (r["median_s"] / fastest["median_s"]) if (fastest and r["status"] == "ok") else None
    fields = ["configuration", "kind", "median_s", "min_s", "ratio_to_fastest_peer"]
    fields += [f"rel_l2_vs_fp32_t{t}" for t in TIMESTEPS] + [f"max_abs_vs_fp32_t{t}" for t in TIMESTEPS] + ["notes"]
    with open(out / "cpu_peers.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(fields)
        for r in rows:
            errs = r.get("errors", {})
            w.writerow([r["label"], r["kind"], fmt(r.get("median_s"), ".4f") if r["status"] == "ok" else "",
                        fmt(r.get("min_s"), ".4f") if r["status"] == "ok" else "", fmt(r["ratio"], ".3f")]
                       + [fmt(errs.get(t, {}).get("rel_l2"), ".3e") for t in TIMESTEPS]
                       + [fmt(errs.get(t, {}).get("max_abs"), ".3e") for t in TIMESTEPS]
                       + ["; ".join(r["notes_all"])])

    def cell(r, key, spec):
        errs = r.get("errors", {})
        got = [errs.get(t, {}).get(key) for t in TIMESTEPS]
        return " / ".join(fmt(g, spec) or "-" for g in got) if any(g is not None for g in got) else ""

    m = meta
    lines = [
        f"# One UNet step on the CPU: peers vs dfast ({m['model']})",
        "",
        f"- date: {m['date']}",
        (f"- machine: {m['machine']['cpu']}, {m['machine']['cores']} cores, {m['machine']['memory_gb']} GB; "
        f"ISA: {', '.join(m['machine']['isa']) or '-'}; native bf16: {'yes' if m['machine']['native_bf16'] else 'no'}"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        (f"- UNet: `{m['onnx']}` (ONNX), `{m['pytorch']}` (PyTorch); random weights (latency does not depend on "
        "weight values)"),
        (f"- one call: sample {m['shapes']['sample']} (N(0,1), seed 0), timestep {m['shapes']['timestep']}, "
        f"encoder_hidden_states {m['shapes']['encoder_hidden_states']} ({m['ehs']}); batch 2 = classifier-free "
        f"guidance; timed at timestep {TIMESTEPS[0]}; inputs: `inputs-t{{{','.join(map(str, TIMESTEPS))}}}.npz`"),
        f"- calibration of every int8 row: {m['calibration']}",
        (f"- timing: {m['warmup']} warm-up + {m['runs']} timed calls per row, each row in a fresh process, rows "
        f"one after the other; threads: {m['threads'] or 'each runtime default (all cores)'}"),
        "- ratio: the row's median / the fastest peer's median"
        + (f" ({fastest['label']})" if fastest else " (no peer ran)"),
        (f"- error: relative L2 ||y - y_ref|| / ||y_ref|| and max |y - y_ref| against {m['reference']}, at "
        f"timesteps {' / '.join(map(str, TIMESTEPS))}"),
        "",
        (f"| configuration | kind | median s | min s | ratio to fastest peer | rel. L2 vs fp32 (t = "
        f"{' / '.join(map(str, TIMESTEPS))}) | max abs | notes |"),
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        good = r["status"] == "ok"
        lines.append(
            f"| {r['label']} | {r['kind']} | {fmt(r.get('median_s'), '.3f') if good else 'failed'} | "
            f"{fmt(r.get('min_s'), '.3f') if good else ''} | {fmt(r['ratio'], '.2f')} | "
            f"{cell(r, 'rel_l2', '.2e')} | {cell(r, 'max_abs', '.2e')} | "
            f"{'; '.join(r['notes_all']).replace('|', '/')} |")
    (out / "cpu_peers.md").write_text("\n".join(lines) + "\n")
    (out / "cpu_peers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=EXPORTS / "sd15-random",
                    help="ONNX pipeline folder with unet/model.onnx (default %(default)s)")
    ap.add_argument("--pytorch", type=Path, default=EXPORTS / "sd15-random-pytorch",
                    help="diffusers pipeline folder with the same weights in unet/ (default %(default)s)")
    ap.add_argument("--arch", choices=["sd15", "tiny"], default="sd15",
                    help="tiny: build the PyTorch twin of --onnx's unet config and export it again (see above); "
                         "--pytorch is then not read")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "sd15-cpu-peers")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list (default: %(default)s); 'none' for "
                                                              "dfast rows only")
    ap.add_argument("--dfast", action="append", default=[], metavar="NAME=FOLDER[:EP]",
                    help="a dfast unet-step row (repeatable); FOLDER empty = --onnx, EP default cpu")
    ap.add_argument("--dfast-bin", default="target/release/dfast",
                    help="dfast binary (default %(default)s, relative to the cwd or this checkout)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, help="threads for every runtime (default: each one's default)")
    ap.add_argument("--timeout", type=float, help="seconds per row before its process is killed")
    ap.add_argument("--profile-ort", action="store_true",
                    help="ONNX Runtime profile of one call of ort-fp32 (and ort-int8): ort_profile_*.md")
    ap.add_argument("--reference", default=REFERENCE,
                    help="the row whose output is the fp32 reference (default %(default)s, else ort-fp32)")
    ap.add_argument("--calibration", type=Path,
                    help="folder of sample-NNN.npz UNet inputs (dfast convert --save-calibration-inputs): the "
                         "int8 peers' calibration set, and the text embeddings of the timed inputs")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.onnx = Path(os.path.expanduser(str(args.onnx)))
    args.pytorch = Path(os.path.expanduser(str(args.pytorch)))

    if args.one:
        run_child(args)
        return

    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be at least 1 and --warmup 0 or more")
    peers = [] if args.peers.strip() == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    dfasts = [parse_dfast(s, args.onnx) for s in args.dfast]
    if args.reference not in peers and args.reference not in [f"dfast-{d[0]}" for d in dfasts] + [REFERENCE]:
        ap.error(f"--reference {args.reference} is not a row of this run")
    out = args.out
    for d in ("outputs", "peers", "logs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    onnx_src = args.onnx
    if args.arch == "tiny":
        print(f"cpu_peers: --arch tiny: building the PyTorch twin of {args.onnx}/unet and exporting it ...",
              flush=True)
        args.onnx, args.pytorch = make_tiny_twin(args.onnx, out / "tiny-export")
        dfasts = [(n, args.onnx if f == onnx_src else f, ep, o) for n, f, ep, o in dfasts]
    cfg = unet_config(args.onnx)
    sets = make_inputs(cfg, out, args.calibration)
    inputs = sets[TIMESTEPS[0]]
    machine = cpu_info()
    versions = {"torch": version("torch"), "diffusers": version("diffusers"), "onnxruntime": version("onnxruntime"),
                "openvino": version("openvino"), "nncf": version("nncf"), "optimum-intel": version("optimum-intel"),
                "onnx": version("onnx"), "numpy": version("numpy"), "python": platform.python_version()}
    calibration = (f"{len(calibration_files(args.calibration))} UNet calls recorded by dfast's fp32 pipeline in "
                   f"`{args.calibration}`" if args.calibration else "none given (--calibration)")
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine, "versions": versions, "onnx": str(args.onnx), "pytorch": str(args.pytorch),
        "model": f"{args.onnx.name if args.arch != 'tiny' else onnx_src.name + ' (tiny twin)'}, "
                 f"{cfg['sample_size']}x{cfg['sample_size']} latents",
        "shapes": {k: list(v.shape) for k, v in inputs.items()},
        "warmup": args.warmup, "runs": args.runs, "threads": args.threads, "command": " ".join(sys.argv),
        "calibration": calibration,
        "ehs": "the text encoder's output in the first calibration sample" if args.calibration else "0.5 N(0,1)",
    }
    print(f"cpu_peers: {machine['cpu']}, {machine['cores']} cores; inputs {meta['shapes']} -> {out}", flush=True)

    rows = []
    for peer in peers:
        print(f"cpu_peers: {peer} ...", flush=True)
        t = time.time()
        load = load_average()
        rec = run_peer(args, peer, out)
        rec["label"] = LABELS[peer].format(**versions)
        rec["load_before"] = load
        rows.append(rec)
        print(f"cpu_peers: {peer}: {rec['status']}" + (f", median {rec['median_s']:.3f} s" if rec["status"] == "ok"
                                                      else f": {rec.get('reason')}") + f" ({time.time() - t:.0f} s)",
              flush=True)
    for name, folder, ep, options in dfasts:
        print(f"cpu_peers: dfast {name} ({folder}, {ep}) ...", flush=True)
        load = load_average()
        rec = run_dfast(args, name, folder, ep, out, options)
        rec["load_before"] = load
        rows.append(rec)
        print(f"cpu_peers: dfast {name}: {rec['status']}" + ("" if rec["status"] == "ok" else f": {rec['reason']}"),
              flush=True)

    # Errors against the fp32 reference (torch fp32; ORT fp32 when torch fp32 did not run).
    ref_row = next((r for r in rows if r["row"] == args.reference and r["status"] == "ok"), None)
    if ref_row is None:
        ref_row = next((r for r in rows if r["row"] == "ort-fp32" and r["status"] == "ok"), None)
    for earlier in (args.reference, REFERENCE, "ort-fp32"):
        if ref_row is None and all(output_path(out, earlier, t).exists() for t in TIMESTEPS):
            ref_row = {"row": earlier, "label": f"an earlier {earlier} output in outputs/ (not rerun this time)"}
    meta["reference"] = ref_row["label"] if ref_row else "nothing (no fp32 reference ran)"
    refs = {t: np.load(output_path(out, ref_row["row"], t)) for t in TIMESTEPS} if ref_row else None
    for r in rows:
        notes = []
        if r["status"] == "ok":
            r["errors"] = {}
            for t in TIMESTEPS:
                y = np.load(output_path(out, r["row"], t))
                if refs is not None and y.shape == refs[t].shape:
                    r["errors"][t] = {"rel_l2": rel_l2(y, refs[t]),
                                      "max_abs": float(np.abs(y.astype(np.float64) - refs[t]).max())}
                elif refs is not None:
                    notes.append(f"output shape {list(y.shape)} != reference {list(refs[t].shape)}")
                if not np.isfinite(y).all():
                    notes.append(f"output at t={t} has NaN/Inf")
            if r.get("load_before"):
                notes.append(f"load average before the row {r['load_before']}")
            if r["kind"] in ("peer", "reference"):
                notes.append(f"load {r['load_s']:.1f} s")
                notes.append(f"peak RSS {r['peak_rss_mb']:.0f} MB")
        else:
            notes.append(r.get("reason", "failed"))
        r["notes_all"] = [n for n in r.get("notes", []) + notes if n]
    write_tables(out, rows, meta)
    print(f"cpu_peers: written {out / 'cpu_peers.md'}, {out / 'cpu_peers.csv'}, {out / 'cpu_peers.json'}")


if __name__ == "__main__":
    main()
