#!/usr/bin/env python3
"""Where the GPU time of one converted component goes: its CUDA kernels, by kind and the top ones.

ONNX Runtime's own profiler times CUDA nodes on the host (launch time), which says nothing about GPU time.
CUPTI sees every kernel the process runs, ONNX Runtime's included, with its real duration on the device;
torch.profiler (ProfilerActivity.CUDA) reads CUPTI. So `profile` loads MODEL.onnx in an ONNX Runtime CUDA
session, binds its inputs on the device (IoBinding; outputs left for ONNX Runtime to allocate on the device),
warms up, profiles RUNS runs and records every kernel: name, total GPU time, calls. `render` makes the
tables from such a record, anywhere (no GPU, no torch, no ONNX Runtime).

  gpu_kernels.py profile MODEL.onnx --tag TAG [--out DIR] [--runs 3] [--warmup 4]
                 [--width 1024 --height 1024 --batch 1 --guidance] [--shapes JSON] [--ep-options JSON]
      Writes DIR/kernels-TAG.json (the kernel records and the summary) and DIR/kernels-TAG.md.
      Inputs are the ones dfast would feed the component (by input name, from --width/--height/--batch;
      --guidance doubles the UNet's batch as classifier-free guidance does): `sample` and `latent_sample`
      [B, C, H/8, W/8], `encoder_hidden_states` [B, 77, D], `text_embeds` [B, D], `time_ids` [B, 6],
      `timestep` 999, `input_ids` [B, 77]; any other input random of its declared shape (symbolic
      dims: B). --shapes '{"name": [dims]}' overrides. Needs torch and onnxruntime-gpu (the GPU host).
  gpu_kernels.py render KERNELS.json [--md OUT.md] [--top 25]
      The Markdown tables from a saved record (prints them; --md also writes them).
  gpu_kernels.py --self-test
      Checks the classification, the sums and the tables on a hand-made record (no GPU needed).

The kinds, first match wins (kernel names of ONNX Runtime 1.31's CUDA EP, cuDNN 9, cuBLAS(Lt) and CUTLASS):
attention (flash / fused MHA / softmax), norm (LayerNorm, GroupNorm, InstanceNorm, cuDNN's BatchNorm-style
kernels), conv (cuDNN fprop / implicit GEMM / winograd), gemm (cuBLAS nvjet, CUTLASS, xmma GEMMs),
transpose (Transpose and cuDNN's NCHW<->NHWC), split/copy (Split, Concat, Slice, Gather, Expand, Pad, Resize,
memcpy, memset), reduce, elementwise (binary / unary / Cast / Gelu / SiLU ...), other.
"""
import argparse
import collections
import json
import os
import re
import sys
import tempfile

# (kind, pattern on the lowercased kernel name); order matters: cuDNN's flash attention is an "fprop",
# its BatchNorm-style kernels (InstanceNormalization) are cuDNN kernels, conv kernels are implicit GEMMs.
KINDS = [
    ("attention", r"fmha|flash|sdpa|attention|mha_|softmax"),
    ("norm", (r"layernorm|layer_norm|groupnorm|group_norm|instancenorm|instance_norm|bn_fw|batchnorm|"
             r"skiplayernorm|rmsnorm|normaliz")),
    ("transpose", r"transpose|nchwtonhwc|nhwctonchw|nchw_to_nhwc|nhwc_to_nchw|tensortransform"),
    ("conv", r"conv|fprop|dgrad|wgrad|implicit_gemm|implicit_convolve|winograd|cudnn"),
    ("gemm", r"gemm|nvjet|cutlass|xmma|matmul|splitkreduce|cublas|s16816|h16816"),
    ("split/copy", r"split|concat|slice|gather|expand|tile|pad|resize|upsample|memcpy|memset|copy|scatter"),
    ("reduce", r"reduce|reduction"),
    ("elementwise", (r"elementwise|element_wise|binary|unary|cast|gelu|silu|sigmoid|tanh|erf|_add|add_|mul|"
                    r"div|sub|where|clip|sqrt|pow|exp|bias")),
]


def kind_of(name):
    low = name.lower()
    return next((k for k, pattern in KINDS if re.search(pattern, low)), "other")


def summarize(record, top=25):
    """By kind and top kernels from a record {"runs": R, "kernels": [{"name", "us", "calls"}, ...]}."""
    runs = record["runs"]
    kinds = collections.defaultdict(lambda: [0.0, 0])
    for k in record["kernels"]:
        entry = kinds[kind_of(k["name"])]
        entry[0] += k["us"]
        entry[1] += k["calls"]
    total_us = sum(k["us"] for k in record["kernels"])
    by_kind = [
        {"kind": kind, "ms_per_run": us / runs / 1000.0, "kernels_per_run": calls / runs,
         "share": us / total_us if total_us else 0.0}
        for kind, (us, calls) in sorted(kinds.items(), key=lambda kv: -kv[1][0])
    ]
    ordered = sorted(record["kernels"], key=lambda k: -k["us"])[:top]
    top_kernels = [
        {"name": k["name"], "kind": kind_of(k["name"]), "ms_per_run": k["us"] / runs / 1000.0,
         "calls_per_run": k["calls"] / runs}
        for k in ordered
    ]
    return {"gpu_ms_per_run": total_us / runs / 1000.0,
            "kernels_per_run": sum(k["calls"] for k in record["kernels"]) / runs,
            "by_kind": by_kind, "top_kernels": top_kernels}


def short(name, width=110):
    name = name.replace("|", "\\|")
    return name if len(name) <= width else name[: width - 3] + "..."


def markdown(record, top=25):
    s = summarize(record, top)
    meta = record.get("meta", {})
    lines = []
    title = meta.get("tag") or meta.get("model") or "model"
    lines.append(f"### GPU kernels: {title}")
    lines.append("")
    facts = [f"{s['gpu_ms_per_run']:.2f} ms of GPU kernels per run ({s['kernels_per_run']:.0f} kernels)",
             f"{record['runs']} profiled runs"]
    for key in ("device", "onnxruntime", "model", "feeds", "ep_options"):
        if meta.get(key):
            value = meta[key] if isinstance(meta[key], str) else json.dumps(meta[key])
            facts.append(f"{key}: {value}")
    lines.append("; ".join(facts) + ". CUPTI kernel times (torch.profiler), IoBinding, no CUDA graph.")
    lines.append("")
    lines.append("| kind | ms per run | share | kernels per run |")
    lines.append("|---|---:|---:|---:|")
    for row in s["by_kind"]:
        lines.append(f"| {row['kind']} | {row['ms_per_run']:.2f} | {100 * row['share']:.1f}% | "
                     f"{row['kernels_per_run']:.0f} |")
    lines.append(f"| **total** | **{s['gpu_ms_per_run']:.2f}** | 100% | {s['kernels_per_run']:.0f} |")
    lines.append("")
    lines.append(f"Top {len(s['top_kernels'])} kernels:")
    lines.append("")
    lines.append("| # | kernel | kind | ms per run | calls per run |")
    lines.append("|---:|---|---|---:|---:|")
    for i, k in enumerate(s["top_kernels"], 1):
        lines.append(f"| {i} | `{short(k['name'])}` | {k['kind']} | {k['ms_per_run']:.3f} | "
                     f"{k['calls_per_run']:.0f} |")
    return "\n".join(lines) + "\n"


def write(record, out_dir, tag, top):
    os.makedirs(out_dir, exist_ok=True)
    record = dict(record)
    record["summary"] = summarize(record, top)
    path = os.path.join(out_dir, f"kernels-{tag}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    md = markdown(record, top)
    with open(os.path.join(out_dir, f"kernels-{tag}.md"), "w") as f:
        f.write(md)
    return path, md


def feeds_for(session, args, np):
    """The inputs dfast would give the component, by name (see the module docs)."""
    h, w = args.height // 8, args.width // 8
    b = args.batch * (2 if args.guidance else 1)
    types = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bfloat16)": np.float32}
    override = json.loads(args.shapes) if args.shapes else {}
    rng = np.random.default_rng(0)
    feeds, shapes = {}, {}
    for i in session.get_inputs():
        declared = [d if isinstance(d, int) and d > 0 else None for d in i.shape]
        if i.name in override:
            shape = override[i.name]
        elif i.name in ("sample", "latent_sample") and len(declared) == 4:
            shape = [b if i.name == "sample" else args.batch, declared[1] or 4, h, w]
        elif i.name == "encoder_hidden_states":
            shape = [b, 77, declared[2] or 768]
        elif i.name == "text_embeds":
            shape = [b, declared[1] or 1280]
        elif i.name == "time_ids":
            shape = [b, declared[1] or 6]
        elif i.name == "input_ids":
            shape = [args.batch, 77]
        elif i.name == "timestep":
            shape = [d if d is not None else b for d in declared]
        else:
            shape = [d if d is not None else b for d in declared]
        dtype = types.get(i.type)
        if dtype is None:
            sys.exit(f"gpu_kernels.py: input {i.name} has type {i.type}, which this script cannot feed")
        if i.name == "timestep":
            a = np.full(shape, 999, dtype)
        elif dtype in (np.int64, np.int32):
            a = rng.integers(0, 1000, size=shape).astype(dtype)
        else:
            a = rng.standard_normal(shape).astype(dtype)
        feeds[i.name] = a
        shapes[i.name] = list(shape)
    return feeds, shapes


def profile(args):
    import numpy as np
    import onnxruntime as ort
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the CUDA context CUPTI attaches to, shared with ONNX Runtime
    ep_options = json.loads(args.ep_options) if args.ep_options else {}
    session = ort.InferenceSession(args.model, providers=[("CUDAExecutionProvider", ep_options)])
    if "CUDAExecutionProvider" not in session.get_providers():
        sys.exit("gpu_kernels.py: the session has no CUDA EP (is onnxruntime-gpu on PYTHONPATH?)")
    feeds, shapes = feeds_for(session, args, np)
    binding = session.io_binding()
    for name, a in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))
    for o in session.get_outputs():
        binding.bind_output(o.name, "cuda")
    for _ in range(args.warmup):
        session.run_with_iobinding(binding)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.runs):
            session.run_with_iobinding(binding)
        torch.cuda.synchronize()
    us = collections.Counter()
    calls = collections.Counter()
    for e in prof.events():
        if "CUDA" in str(e.device_type):
            us[e.name] += getattr(e, "device_time", None) or getattr(e, "cuda_time", 0)
            calls[e.name] += 1
    record = {
        "runs": args.runs,
        "kernels": [{"name": n, "us": round(t, 3), "calls": calls[n]} for n, t in us.most_common()],
        "meta": {"tag": args.tag, "model": args.model, "device": torch.cuda.get_device_name(0),
                 "onnxruntime": ort.__version__, "feeds": shapes, "ep_options": ep_options},
    }
    path, md = write(record, args.out, args.tag, args.top)
    print(md)
    print(f"gpu_kernels.py: wrote {path}")


def render(args):
    with open(args.record) as f:
        record = json.load(f)
    if not isinstance(record, dict) or "runs" not in record or "kernels" not in record:
        sys.exit(f"gpu_kernels.py: {args.record} is not a kernel record (expected \"runs\" and \"kernels\")")
    md = markdown(record, args.top)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    print(md, end="")


def self_test():
    """Known kernel names of the CUDA EP (from FIELD.md's breakdown of the SDXL UNet), their kinds, and the
    sums and tables of a two-run record made of them."""
    names = {
        "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT": "gemm",
        "cutlass_80_tensorop_f16_s16816gemm_relu_f16_256x128_32x3_nn_align8": "gemm",
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "conv",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true>": "transpose",
        "void cudnn::bn_fw_inf_1C11_kernel_NCHW<__half, float, true, 1>": "norm",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wmma_f16_knob_3_64x64x128": "attention",
        "void onnxruntime::cuda::_BinaryElementWiseSimple<true, true, __half, __half, __half>": "elementwise",
        "void onnxruntime::cuda::_UnaryElementWise<__half, __half, onnxruntime::cuda::OP_Gelu<__half>>":
            "elementwise",
        "void onnxruntime::cuda::_SplitKernelSameSplitDim<4, int>": "split/copy",
        "void onnxruntime::cuda::_TransposeImpl<unsigned short>": "transpose",
        "void onnxruntime::cuda::cuApplyLayerNorm<__half, float, __half, false, false>": "norm",
        "void onnxruntime::contrib::cuda::GroupNormNHWCSumKernel<__half>": "norm",
        "void onnxruntime::cuda::_ElementWiseKernel<onnxruntime::cuda::CastFunctor>": "elementwise",
        "Memset (Device)": "split/copy",
        "void onnxruntime::cuda::reduce_matrix_rows_kernel<float, float>": "reduce",
        "some_unknown_kernel_xyz": "other",
    }
    wrong = {n: (kind_of(n), k) for n, k in names.items() if kind_of(n) != k}
    assert not wrong, f"misclassified (got, want): {wrong}"
    # Two runs; durations in microseconds over both runs.
    kernels = [
        {"name": "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT", "us": 8000.0, "calls": 100},
        {"name": "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64",
         "us": 4000.0, "calls": 40},
        {"name": "void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true>",
         "us": 1000.0, "calls": 80},
        {"name": "void onnxruntime::cuda::_BinaryElementWiseSimple<true, true, __half, __half, __half>",
         "us": 3000.0, "calls": 300},
        {"name": "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wmma_f16_knob_3_64x64x128",
         "us": 2000.0, "calls": 20},
        {"name": "void onnxruntime::cuda::_SplitKernelSameSplitDim<4, int>", "us": 2000.0, "calls": 10},
    ]
    record = {"runs": 2, "kernels": kernels, "meta": {"tag": "self-test", "device": "hand-made sample"}}
    s = summarize(record, top=3)
    assert abs(s["gpu_ms_per_run"] - 10.0) < 1e-9, s["gpu_ms_per_run"]
    assert s["kernels_per_run"] == 275, s["kernels_per_run"]
    by = {r["kind"]: r for r in s["by_kind"]}
    assert set(by) == {"gemm", "conv", "transpose", "elementwise", "attention", "split/copy"}, set(by)
    assert abs(by["gemm"]["ms_per_run"] - 4.0) < 1e-9 and abs(by["gemm"]["share"] - 0.4) < 1e-9
    assert abs(by["transpose"]["ms_per_run"] - 0.5) < 1e-9 and by["transpose"]["kernels_per_run"] == 40
    assert next(r["kind"] for r in s["by_kind"]) == "gemm"
    assert [k["ms_per_run"] for k in s["top_kernels"]] == [4.0, 2.0, 1.5], s["top_kernels"]
    with tempfile.TemporaryDirectory() as d:
        path, md = write(record, d, "self-test", 3)
        with open(path) as f:
            saved = json.load(f)
        assert saved["kernels"] == kernels and abs(saved["summary"]["gpu_ms_per_run"] - 10.0) < 1e-9
        with open(os.path.join(d, "kernels-self-test.md")) as f:
            assert f.read() == md
        # Rendering the saved record gives the same tables.
        assert markdown(saved, 3) == md
    for row in ("| gemm | 4.00 | 40.0% | 50 |", "| transpose | 0.50 | 5.0% | 40 |",
                "| **total** | **10.00** | 100% | 275 |", ("| 1 | `nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT` | gemm | "
                "4.000 | 50 |")):
        assert row in md, f"missing row {row!r} in\n{md}"
    assert md.count("\n| ") == 6 + 1 + 3 + 2, md  # kind rows, total, top rows, the two header rows
    print(md, end="")
    print("gpu_kernels.py --self-test: ok")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    parser = argparse.ArgumentParser(description="GPU kernel time of an ONNX model by kind (see the module docs)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="profile MODEL.onnx on the CUDA EP (needs a GPU)")
    p.add_argument("model")
    p.add_argument("--tag", required=True)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--guidance", action="store_true", help="the UNet's batch doubled (classifier-free guidance)")
    p.add_argument("--shapes", help="JSON {input: shape} overriding the derived shapes")
    p.add_argument("--ep-options", help="JSON CUDA EP options, e.g. {\"prefer_nhwc\": \"1\"}")
    p.add_argument("--top", type=int, default=25)
    r = sub.add_parser("render", help="the tables of a saved kernel record")
    r.add_argument("record")
    r.add_argument("--md")
    r.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.command == "profile":
        if args.runs < 1:
            sys.exit("gpu_kernels.py: --runs must be at least 1")
        profile(args)
    else:
        render(args)


if __name__ == "__main__":
    main()
