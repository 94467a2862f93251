#!/usr/bin/env bash
# The CPU run (the seed's run_sd_cpu.sh): SD v1.5-size UNet, text encoder and VAE with random weights,
# 2 steps, batch 1, the model card's size and scheduler (models/sd15.toml: 512x512, DPM-Solver multistep), on
# ONNX Runtime's CPU EP and on PyTorch's CPU, one report.
#
#   experiment-scripts/run_sd_cpu.sh
#
# 1. exports the random-weight SD1.5 pipeline with export_onnx.py when EXPORTS/sd15-random is missing
#    (about 1.1 GB, a few minutes);
# 2. dfast bench on the cpu EP, fp32, one folder per profile: baseline, sdpa, fuse-qkv, int8-dynamic;
# 3. pytorch_reference.py --device cpu on the same weights: fp32, bf16, bf16+sdpa, bf16+sdpa+compile,
#    bf16+sdpa+compile+fused-qkv (the seed's CPU recipe ends with bf16 + SDPA + compile + fused QKV);
# 4. dfast report -> benchmarks/sd15-cpu/results.csv, report.md, report.png.
# 1 warm-up + 3 timed runs per row (WARMUP, RUNS; the seed warms up 3 times: on the CPU one is enough, and
# the compiled settings compile during it).
#
# How long (estimate, not measured end to end): on the 2-core Xeon development machine roughly 1 to 1.5 hours:
# each ONNX Runtime run is tens of seconds (an fp32 SD1.5 UNet step at 512x512 takes several seconds there),
# PyTorch's bf16 settings are slower than fp32 on a CPU without AVX512-BF16/AMX, and each torch.compile
# warm-up of the UNet and VAE takes many minutes on 2 cores. On a 16-core machine expect well under an hour.
# It uses every core: do not run it beside other work you care about.
# Runs from any working directory; every variable bench_common.sh lists overrides a default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
STEPS=${STEPS:-2}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-3}
PROFILES=${PROFILES:-baseline,sdpa,fuse-qkv,int8-dynamic}
PRECISION=${PRECISION:-fp32}
PT_DEVICE=${PT_DEVICE:-cpu}
OUT=${OUT:-$DFAST_ROOT/benchmarks/sd15-cpu}
TAG=${TAG:-sd15-cpu}
run_model_benchmark sd15 cpu
