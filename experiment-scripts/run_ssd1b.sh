#!/usr/bin/env bash
# SSD-1B (segmind's distilled SDXL: SDXL's blocks with transformer depth 1/2/4 down, 4/4/10 and 2/1/1 up, a
# one-ResNet mid block, as export_onnx.py's SSD1B_UNET; random weights): the seed's progressive settings on
# dfast and PyTorch, one report.
#
#   experiment-scripts/run_ssd1b.sh [EP]     EP: cuda (default), tensorrt, cpu, openvino; or the EP variable
#
# 1. exports the random-weight SSD-1B pipeline with export_onnx.py when EXPORTS/ssd-1b-random is
#    missing (about 9 GB of disk; roughly 10 minutes on 16 cores);
# 2. dfast bench, one folder per row: the fp32 baseline, then baseline, sdpa, fuse-qkv, conv1x1 and
#    int8-dynamic in the EP's precision (fp16 on cuda/tensorrt; the VAE decoder stays fp32);
# 3. pytorch_reference.py on the same weights: fp32, bf16, bf16+sdpa, bf16+sdpa+compile,
#    bf16+sdpa+compile+fused-qkv, VAE upcast to fp32 as the seed;
# 4. dfast report -> OUT/results.csv, report.md, report.png (OUT default benchmarks/ssd-1b-<EP>/).
# The seed's recipe: 1024x1024, 30 steps, batch 1, Euler, 3 warm-up + 3 timed runs.
#
# How long (estimates, not measured end to end): on an H200/H100 about 25-35 minutes, a little under
# run_sdxl.sh. Needs about 20 GB of free disk under EXPORTS.
# Runs from any working directory. Without an NVIDIA GPU, or without ONNX Runtime's GPU build, it stops
# before the export with the reason.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
run_model_benchmark ssd-1b "${1:-${EP:-cuda}}"
