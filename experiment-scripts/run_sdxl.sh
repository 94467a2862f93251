#!/usr/bin/env bash
# SDXL base 1.0 (real architecture, random weights): the seed's progressive settings on dfast and PyTorch,
# one report. The seed's headline benchmark (FIELD.md section 1).
#
#   experiment-scripts/run_sdxl.sh [EP]      EP: cuda (default), tensorrt, cpu, openvino; or the EP variable
#
# 1. exports the random-weight SDXL pipeline with export_onnx.py when EXPORTS/sdxl-random is missing
#    (about 14 GB of disk, about 11 GB of memory; roughly 10-20 minutes on 16 cores);
# 2. dfast bench, one folder per row: the fp32 baseline, then baseline, sdpa, fuse-qkv, conv1x1 and
#    int8-dynamic in the EP's precision (fp16 on cuda/tensorrt; the VAE decoder stays fp32, model card);
# 3. pytorch_reference.py on the same weights (saved once to EXPORTS/sdxl-random-pytorch, about 14 GB more):
#    fp32, bf16, bf16+sdpa, bf16+sdpa+compile, bf16+sdpa+compile+fused-qkv, VAE upcast to fp32 as the seed;
# 4. dfast report -> OUT/results.csv, report.md, report.png (OUT default benchmarks/sdxl-<EP>/).
# The seed's recipe: 1024x1024, 30 steps, batch 1, Euler, 3 warm-up + 3 timed runs.
#
# How long (estimates from FIELD.md section 4, not measured end to end): on an H200/H100 about 30-45 minutes
# (export 10-20, dfast 6 rows of about 4 s per run plus session creation, PyTorch 5 settings of 1-4 s per
# run plus 2 torch.compile warm-ups of a few minutes each; PT_ARGS="--compile-mode max-autotune" as the seed
# adds much more). Needs about 30 GB of free disk under EXPORTS. Not for the CPU: use EP=cpu only with small
# STEPS/WIDTH/HEIGHT.
# Runs from any working directory. Without an NVIDIA GPU, or without ONNX Runtime's GPU build (ORT_LIB_CUDA,
# ORT_DYLIB_PATH or .ort/cuda/), it stops before the export with the reason.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
run_model_benchmark sdxl "${1:-${EP:-cuda}}"
