#!/usr/bin/env python3
"""The bookkeeping of `gpu_sdxl.sh check` (the one-call GPU check): its inputs, its numbers and its summary.
Python's standard library only, so that the check's dry run (EP=cpu) runs where numpy and torch are absent;
`ort-optimize` alone imports ONNX Runtime's Python package (the GPU host has it once assemble.sh has run).

  gpu_check.py inputs --config UNET/config.json --width W --height H --out FILE.npz [--batch 1]
      The inputs of one UNet call as the pipeline makes them at WxH with classifier-free guidance (batch 2B):
      sample ~ N(0,1) [2B, in_channels, H/8, W/8], timestep 500 [2B], encoder_hidden_states ~ 0.5 N(0,1)
      [2B, 77, cross_attention_dim] and, for SDXL (addition_embed_type "text_time"), text_embeds ~ N(0,1)
      [2B, projection_class_embeddings_input_dim - 6 addition_time_embed_dim] and time_ids [2B, 6] =
      (H, W, 0, 0, H, W); all float32, drawn from random.Random(0) in that order. The same config gives the
      same bytes whoever writes them (pytorch_reference.py's UNet-alone mode calls `write_inputs`).
  gpu_check.py rel-l2 A.npy REFERENCE.npy --bound 1e-2 --out numerics.json [--label-a X --label-ref Y]
      ||a - ref|| / ||ref|| over float32/float16/float64 .npy files, written with the bound and whether it
      holds, and printed as one line; exit status 0 either way (the JSON says), 1 when a file cannot be read
      or the shapes differ.
  gpu_check.py row --csv unet_steps.csv --name NAME --report REPORT.json [--runtime dfast] [--note TEXT]
      Appends one timing row from a `dfast unet-step --json` report (or pytorch_reference.py's UNet-alone
      JSON, the same keys) and rewrites unet_steps.md beside the CSV.
  gpu_check.py plan SUMMARY.json ID=TITLE... [--meta KEY=VALUE...]
      Starts the summary: every planned step, each "pending" until `step` records it.
  gpu_check.py step SUMMARY.json ID STATUS [REASON] [--seconds S] [--meta KEY=VALUE...]
      Records a step as done, skipped or failed (with the reason), and rewrites SUMMARY.md beside the JSON.
  gpu_check.py finish SUMMARY.json REASON
      Every step still pending becomes "skipped" with REASON (the script's exit: the deadline came first).
  gpu_check.py bench-rows RESULTS.csv
      One line per row of a `dfast bench` CSV: profile, total, UNet step, VAE decode.
  gpu_check.py ort-optimize IN.onnx OUT.onnx [--ep cuda|cpu] [--precision fp16|fp32]
      ONNX Runtime's Stable Diffusion optimizer (onnxruntime.transformers, model_type unet; with --ep cuda,
      the default, its GPU fusions: GroupNorm, SkipGroupNorm, NhwcConv, ...) on an fp32 UNet, then fp16
      (keep_io_types off), as FIELD.md's SD1.5 comparison ran it; weights in OUT.onnx.data.
"""

import argparse
import array
import ast
import json
import math
import os
import random
import struct
import sys
import time
import zipfile

STATUSES = ("done", "skipped", "failed")
ROW_COLUMNS = ["row", "runtime", "model", "ep", "ep_options", "io_binding", "median_ms", "min_ms", "first_ms",
               "session_s", "transfer_ms", "runs", "device", "load", "note"]


# ---------------------------------------------------------------------------------------------------------
# .npy / .npz without numpy


def npy_bytes(shape, values):
    """A little-endian float32 .npy (format 1.0) of `values` (an array('f')) in C order."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    # magic (6) + version (2) + header length (2) + header + newline, padded to a multiple of 64
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * (pad % 64) + "\n"
    data = values if sys.byteorder == "little" else array.array("f", values)
    if sys.byteorder != "little":
        data.byteswap()
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + data.tobytes()


def read_npy(path):
    """(shape, list of floats) of a float .npy in C order."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    major = raw[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", raw[8:10]), 10
    else:
        (hlen,), start = struct.unpack("<I", raw[8:12]), 12
    header = ast.literal_eval(raw[start:start + hlen].decode("latin1"))
    if header.get("fortran_order"):
        raise ValueError(f"{path}: Fortran-ordered arrays are not read here")
    shape = tuple(header["shape"])
    count = math.prod(shape)
    codes = {"<f4": "f", "<f8": "d", "<f2": "e"}
    code = codes.get(header["descr"])
    if code is None:
        raise ValueError(f"{path}: dtype {header['descr']} (expected float16, float32 or float64, little-endian)")
    body = raw[start + hlen:]
    values = struct.unpack(f"<{count}{code}", body[:count * struct.calcsize(code)])
    return shape, values


def unet_inputs(config, width, height, batch=1):
    """name -> (shape, array('f')) of one UNet call; see the module docs."""
    rows = 2 * batch
    h, w = height // 8, width // 8
    rng = random.Random(0)

    def normal(shape, scale=1.0):
        return shape, array.array("f", (rng.gauss(0.0, 1.0) * scale for _ in range(math.prod(shape))))

    context = config["cross_attention_dim"]
    if isinstance(context, (list, tuple)):
        context = context[0]
    inputs = {
        "sample": normal((rows, int(config.get("in_channels", 4)), h, w)),
        "timestep": ((rows,), array.array("f", [500.0] * rows)),
        "encoder_hidden_states": normal((rows, 77, int(context)), 0.5),
    }
    if config.get("addition_embed_type") == "text_time":
        dim = int(config["projection_class_embeddings_input_dim"]) - 6 * int(config["addition_time_embed_dim"])
        inputs["text_embeds"] = normal((rows, dim))
        inputs["time_ids"] = ((rows, 6), array.array("f", [height, width, 0, 0, height, width] * rows))
    return inputs


def write_inputs(config, width, height, path, batch=1):
    """Writes the .npz (atomically: a finished file or none); returns {name: shape}."""
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive multiples of 8, not {width}x{height}")
    inputs = unet_inputs(config, width, height, batch)
    tmp = f"{path}.{os.getpid()}.partial"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for name, (shape, values) in inputs.items():
            # A fixed timestamp: the same inputs are the same bytes.
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), npy_bytes(shape, values))
    os.replace(tmp, path)
    return {name: list(shape) for name, (shape, _) in inputs.items()}


# ---------------------------------------------------------------------------------------------------------
# numbers


def rel_l2(a, ref):
    num = sum((x - y) ** 2 for x, y in zip(a, ref))
    den = sum(y * y for y in ref)
    return math.sqrt(num / max(den, 1e-30))


def compare(path_a, path_ref, bound):
    shape_a, a = read_npy(path_a)
    shape_r, ref = read_npy(path_ref)
    if shape_a != shape_r:
        raise ValueError(f"{path_a} has shape {list(shape_a)}, {path_ref} has {list(shape_r)}")
    finite = all(math.isfinite(v) for v in a) and all(math.isfinite(v) for v in ref)
    err = rel_l2(a, ref) if finite else float("nan")
    return {
        "shape": list(shape_a),
        "rel_l2": err,
        "max_abs_diff": max((abs(x - y) for x, y in zip(a, ref)), default=0.0) if finite else float("nan"),
        "ref_rms": math.sqrt(sum(y * y for y in ref) / max(len(ref), 1)),
        "finite": finite,
        "bound": bound,
        "within": finite and err <= bound,
    }


def read_rows(path):
    import csv

    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path, rows):
    import csv

    tmp = path + ".partial"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    md = ["| row | runtime | median ms | min ms | first ms | session s | copies ms | runs | ep options | device | note |",
          "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        md.append(f"| {r['row']} | {r['runtime']} | {r['median_ms']} | {r['min_ms']} | {r['first_ms']} | "
                  f"{r['session_s']} | {r['transfer_ms']} | {r['runs']} | {r['ep_options']} | {r['device']} | "
                  f"{r['note']} |")
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write("\n".join(md) + "\n")


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def row_from_report(name, report, runtime, device, note):
    runs = report.get("runs_s") or []
    ms = lambda s: f"{1e3 * float(s):.3f}"
    options = report.get("ep_options") or {}
    if isinstance(options, dict):
        options = ";".join(f"{k}={v}" for k, v in sorted(options.items()))
    for key in ("median_s", "min_s", "first_run_s"):
        value = report.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"report of row {name}: {key} is {value!r}, expected a positive number of seconds")
    return {
        "row": name,
        "runtime": runtime,
        "model": report.get("model", ""),
        "ep": report.get("ep", ""),
        "ep_options": options,
        "io_binding": str(report.get("io_binding", "")).lower(),
        "median_ms": ms(report["median_s"]),
        "min_ms": ms(report["min_s"]),
        "first_ms": ms(report["first_run_s"]),
        "session_s": f"{float(report.get('session_create_s', 0.0)):.3f}",
        "transfer_ms": ms(report["transfer_median_s"]) if "transfer_median_s" in report else "",
        "runs": len(runs),
        "device": report.get("device") or device,
        "load": load_average(),
        "note": note,
    }


# ---------------------------------------------------------------------------------------------------------
# the summary


def read_summary(path):
    with open(path) as f:
        return json.load(f)


def write_summary(path, summary):
    summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, path)
    lines = ["# GPU check: what ran", ""]
    meta = summary.get("meta", {})
    if meta:
        lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    lines += ["| # | step | status | seconds | reason / result |", "|---:|---|---|---:|---|"]
    for i, s in enumerate(summary["steps"], 1):
        secs = "" if s.get("seconds") is None else f"{s['seconds']:.0f}"
        lines.append(f"| {i} | {s['title']} (`{s['id']}`) | {s['status']} | {secs} | {s.get('reason', '')} |")
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def key_values(items, what):
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"gpu_check.py: {what} `{item}` is not KEY=VALUE")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# ONNX Runtime's SD optimizer (step 8 of the check)


def ort_optimize(src, dst, ep, fp16):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("unet")
    if ep != "cuda":
        # The CUDA-only contrib ops (ONNX Runtime's CPU EP has no kernel for them).
        for flag in ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                     "enable_bias_add", "enable_packed_qkv", "enable_packed_kv"):
            if hasattr(options, flag):
                setattr(options, flag, False)
    model = optimize_model(src, model_type="unet", opt_level=0, optimization_options=options, use_gpu=ep == "cuda")
    if fp16:
        model.convert_float_to_float16(keep_io_types=False)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    model.save_model_to_file(dst, use_external_data_format=True)
    ops = {}
    for node in model.model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    print(json.dumps({"nodes": len(model.model.graph.node), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("--config", required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", required=True)
    p = sub.add_parser("rel-l2")
    p.add_argument("a")
    p.add_argument("reference")
    p.add_argument("--bound", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--label-a", default="")
    p.add_argument("--label-ref", default="")
    p = sub.add_parser("row")
    p.add_argument("--csv", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--runtime", default="dfast")
    p.add_argument("--device", default="")
    p.add_argument("--note", default="")
    p = sub.add_parser("plan")
    p.add_argument("summary")
    p.add_argument("steps", nargs="+")
    p.add_argument("--meta", action="append")
    p = sub.add_parser("step")
    p.add_argument("summary")
    p.add_argument("id")
    p.add_argument("status", choices=STATUSES)
    p.add_argument("reason", nargs="?", default="")
    p.add_argument("--seconds", type=float)
    p.add_argument("--meta", action="append")
    p = sub.add_parser("finish")
    p.add_argument("summary")
    p.add_argument("reason")
    p = sub.add_parser("bench-rows")
    p.add_argument("csv")
    p = sub.add_parser("ort-optimize")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--ep", choices=["cuda", "cpu"], default="cuda", help="cpu: without the GPU-only fusions")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    args = ap.parse_args()

    if args.command == "inputs":
        with open(args.config) as f:
            config = json.load(f)
        try:
            shapes = write_inputs(config, args.width, args.height, args.out, args.batch)
        except (KeyError, ValueError) as e:
            raise SystemExit(f"gpu_check.py inputs: {args.config}: {e}")
        print(json.dumps(shapes))
    elif args.command == "rel-l2":
        try:
            result = compare(args.a, args.reference, args.bound)
        except (OSError, ValueError, struct.error) as e:
            raise SystemExit(f"gpu_check.py rel-l2: {e}")
        result = {"a": args.label_a or args.a, "reference": args.label_ref or args.reference, **result}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        verdict = "<=" if result["within"] else "NOT <="
        print(f"relative L2 {result['rel_l2']:.3e} {verdict} {args.bound:g} (max abs diff {result['max_abs_diff']:.3e})")
    elif args.command == "row":
        try:
            with open(args.report) as f:
                lines = [line for line in f.read().splitlines() if line.strip().startswith("{")]
            report = json.loads(lines[-1])
            row = row_from_report(args.name, report, args.runtime, args.device, args.note)
        except (OSError, IndexError, json.JSONDecodeError, ValueError, KeyError) as e:
            raise SystemExit(f"gpu_check.py row: {args.report}: no usable report ({e})")
        rows = [r for r in read_rows(args.csv) if r["row"] != args.name] + [row]
        write_rows(args.csv, rows)
        print(f"{row['row']}: median {row['median_ms']} ms, min {row['min_ms']} ms ({row['runs']} runs)")
    elif args.command == "plan":
        steps = []
        for item in args.steps:
            sid, sep, title = item.partition("=")
            if not sep:
                raise SystemExit(f"gpu_check.py plan: step `{item}` is not ID=TITLE")
            steps.append({"id": sid, "title": title, "status": "pending", "reason": "not reached"})
        write_summary(args.summary, {"meta": key_values(args.meta, "--meta"), "steps": steps})
    elif args.command == "step":
        summary = read_summary(args.summary)
        step = next((s for s in summary["steps"] if s["id"] == args.id), None)
        if step is None:
            raise SystemExit(f"gpu_check.py step: {args.summary} plans no step `{args.id}`")
        if args.status != "done" and not args.reason:
            raise SystemExit(f"gpu_check.py step: {args.id} {args.status} needs a reason")
        step.update(status=args.status, reason=args.reason)
        if args.seconds is not None:
            step["seconds"] = round(args.seconds, 1)
        summary["meta"].update(key_values(args.meta, "--meta"))
        write_summary(args.summary, summary)
    elif args.command == "finish":
        summary = read_summary(args.summary)
        for step in summary["steps"]:
            if step["status"] == "pending":
                step.update(status="skipped", reason=args.reason)
        write_summary(args.summary, summary)
    elif args.command == "bench-rows":
        rows = read_rows(args.csv)
        if not rows:
            raise SystemExit(f"gpu_check.py bench-rows: {args.csv} has no rows")
        print("; ".join(f"{r['profile']} {r['precision']} {r['ep']}: total {float(r['total_s']):.3f} s, UNet step "
                        f"{float(r['unet_step_ms']):.1f} ms, VAE decode {float(r['vae_decode_ms']):.1f} ms"
                        for r in rows))
    else:
        ort_optimize(args.src, args.dst, args.ep, args.precision == "fp16")


if __name__ == "__main__":
    main()
