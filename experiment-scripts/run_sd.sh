#!/usr/bin/env bash
# SD v1.5 (real architecture, random weights): the seed's progressive settings on dfast and PyTorch, one report.
#
#   experiment-scripts/run_sd.sh [EP]        EP: cpu (default), cuda, tensorrt, openvino; or the EP variable
#
# 1. exports the random-weight SD1.5 pipeline with export_onnx.py when EXPORTS/sd15-random is missing
#    (about 1.1 GB; a few minutes, needs about 4 GB of memory);
# 2. dfast bench, one folder per row: the fp32 baseline, then baseline, sdpa, fuse-qkv, conv1x1 and
#    int8-dynamic in the EP's precision (fp16 on cuda/tensorrt, fp32 on cpu/openvino);
# 3. pytorch_reference.py on the same weights: fp32, bf16, bf16+sdpa, bf16+sdpa+compile,
#    bf16+sdpa+compile+fused-qkv (torch-cuda for the cuda/tensorrt EPs, torch-cpu otherwise);
# 4. dfast report -> OUT/results.csv, report.md, report.png (OUT default benchmarks/sd15-<EP>/).
# The seed's SD1.5 recipe: 512x512, 30 steps, batch 1, DPM-Solver multistep, 3 warm-up + 3 timed runs.
#
# How long (estimates, not measured end to end): on an H100/H200 with EP=cuda about 15-25 minutes, most of it
# ONNX Runtime session creation per profile and the two torch.compile warm-ups. On the 2-core Xeon development
# machine with EP=cpu it is many hours (an SD1.5 UNet step at 512x512 takes seconds there, 30 steps x 6 runs
# x 10 rows); use run_sd_cpu.sh there instead.
# Runs from any working directory. Every variable bench_common.sh lists (STEPS, PROFILES, PT_SETTINGS, OUT,
# DFAST, PYTHON, ...) overrides a default. A step that cannot run here (no GPU for cuda, no ONNX Runtime GPU
# build, no CUDA for PyTorch) stops the script before the export with the reason; a step that fails later
# is reported at the end and makes the exit status 1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
run_model_benchmark sd15 "${1:-${EP:-cpu}}"
