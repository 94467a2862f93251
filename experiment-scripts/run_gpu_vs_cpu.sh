#!/usr/bin/env bash
# One model on every execution provider this machine has, dfast and PyTorch side by side, in one plot.
#
#   experiment-scripts/run_gpu_vs_cpu.sh [MODEL]      MODEL: sd15 (default), sdxl, ssd-1b; or the ARCH variable
#
# 1. probes the EPs: cpu must run; cuda, tensorrt and openvino are each checked (GPU present, ONNX Runtime
#    build with that provider: ORT_LIB_<EP>, ORT_DYLIB_PATH or .ort/<flavour>/, TensorRT libraries) and then
#    tried with a one-step bench of the embedded models/tiny-sd; those that fail are listed with the reason
#    and left out. EPS=cpu,cuda (say) instead requires exactly those and stops if one cannot run;
# 2. exports the random-weight model with export_onnx.py when EXPORTS/<model>-random is missing;
# 3. dfast bench per EP, profiles baseline, fuse-qkv, int8-dynamic (PROFILES), in each EP's precision
#    (fp32 on cpu/openvino, fp16 on cuda/tensorrt; PRECISION overrides);
# 4. pytorch_reference.py with fp32 and bf16+sdpa+compile+fused-qkv (PT_SETTINGS) on torch-cpu and, when
#    PyTorch sees a GPU, torch-cuda;
# 5. dfast report -> OUT/results.csv, report.md, report.png (OUT default benchmarks/<model>-gpu-vs-cpu/).
# Defaults: the model card's size (512x512 for sd15, 1024x1024 for SDXL), 4 steps (per-step times are what the
# plot compares), batch 1, 1 warm-up + 3 timed runs.
#
# How long (estimates, not measured end to end): sd15 on a 16-core H100/H200 host about 20-30 minutes, nearly
# all of it the CPU rows (an fp32 SD1.5 UNet step at 512x512 takes around a second on 16 cores, torch.compile
# on the CPU several minutes); sdxl there over an hour (SDXL on the CPU is slow). On the 2-core development
# machine (CPU only) sd15 takes about an hour.
# Runs from any working directory; every variable bench_common.sh lists overrides a default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
ARCH=${1:-${ARCH:-sd15}}
STEPS=${STEPS:-4}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-3}
card_defaults "$ARCH"
PROFILES=${PROFILES:-baseline,fuse-qkv,int8-dynamic}
PT_SETTINGS=${PT_SETTINGS-fp32,bf16+sdpa+compile+fused-qkv}
MODEL_DIR=${MODEL_DIR:-$EXPORTS/$ARCH-random}
OUT=${OUT:-$DFAST_ROOT/benchmarks/$ARCH-gpu-vs-cpu}
TAG=${TAG:-$ARCH-gpu-vs-cpu}
IFS=, read -r -a profiles <<<"$PROFILES"

check_python
check_dfast
eps=()
if [ -n "${EPS:-}" ]; then
  IFS=, read -r -a wanted <<<"$EPS"
  for ep in "${wanted[@]}"; do
    require_ep "$ep"
    eps+=("$ep")
  done
else
  require_ep cpu
  eps+=(cpu)
  for ep in cuda tensorrt openvino; do
    log "probing the $ep EP"
    if why=$(probe_ep "$ep"); then
      eps+=("$ep")
    else
      log "$ep EP not available here, left out: $why"
    fi
  done
fi
pt_devices=(cpu)
if [ -n "${PT_SETTINGS:-}" ] && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  pt_devices+=(cuda)
else
  log "PyTorch sees no CUDA device: PyTorch rows on torch-cpu only"
fi
log "EPs: ${eps[*]}; PyTorch: ${pt_devices[*]}"
prepare_out "$OUT"
ensure_export "$ARCH" "$MODEL_DIR"

for ep in "${eps[@]}"; do
  bench_profiles "$ep" "$MODEL_DIR" "$OUT" "${PRECISION:-$(default_precision "$ep")}" "${profiles[@]}"
done
for device in "${pt_devices[@]}"; do
  bench_pytorch "$ARCH" "$(basename "$MODEL_DIR")" "$OUT" "$device"
done
report "$OUT" "$ARCH (random weights), ${WIDTH}x${HEIGHT}, $STEPS steps: dfast on $(IFS=/; echo "${eps[*]}") vs PyTorch on $(IFS=/; echo "${pt_devices[*]}")"
finish
