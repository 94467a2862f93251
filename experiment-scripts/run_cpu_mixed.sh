#!/usr/bin/env bash
# CPU mixed precision on the SD v1.5-size UNet (batch 2, 64x64 latents = 512x512): the OpenVINO peers through
# their own Python APIs (f32 and bf16 hints, NNCF's post-training int8, optimum-intel's hybrid int8) and
# dfast's int8 configurations on the OpenVINO EP, rows one after the other in one cpu_peers.py run, each with
# its relative L2 error against OpenVINO's f32 output on the same inputs; then `dfast tune` on the same UNet
# (predicted vs measured step) and a whole image of int8-mixed against the fp32 image of the same seed.
#
#   PYTHON_OV=/tmp/ov/bin/python OUT=benchmarks/sd15-cpu-peers experiment-scripts/run_cpu_mixed.sh
#
# The weights are RANDOM (export_onnx.py --random-weights --arch sd15): latency does not depend on weight
# values; the errors compare configurations on the same random weights.
#
# Environment (all optional), besides bench_common.sh's PYTHON, EXPORTS, EXPORTER:
#   PYTHON_OV   Python with openvino, nncf and optimum-intel (the peers' versions), for cpu_peers.py
#               (default: PYTHON)
#   PEERS       cpu_peers.py's --peers (default: ov-f32,ov-split,ov-nncf-int8,ov-hybrid-int8, and ov-bf16 where
#               the CPU has AVX512-BF16)
#   DFAST       dfast binary (default target/debug/dfast of this checkout; the timed work runs in ONNX
#               Runtime and OpenVINO, not in dfast's own code)
#   MODEL_DIR   the ONNX pipeline (default EXPORTS/sd15-random; exported when missing)
#   CONVERTED   conversions, made once and reused (default EXPORTS/sd15-random-converted)
#   OUT         results (default benchmarks/sd15-cpu-peers)
#   TUNED       a profile from an earlier `dfast tune` to convert and time as a row (default: none)
#   WARMUP, RUNS  per row (default 1 and 3); STEPS  denoising steps of the image check (default 6)
#   SKIP_TUNE=1, SKIP_IMAGE=1  leave those parts out; TUNE_ARGS  more dfast tune arguments (e.g. --runs 3)
#
# How long (measured 2026-11-30 on the 2-core AMD EPYC while other work loaded it, load average about 10): the
# int8-static conversion 49 minutes once (calibration runs the fp32 pipeline; debug build), the rows 14 minutes,
# tune 10, the image check 4.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-3}
STEPS=${STEPS:-6}
MODEL_DIR=${MODEL_DIR:-$EXPORTS/sd15-random}
CONVERTED=${CONVERTED:-$EXPORTS/sd15-random-converted}
OUT=${OUT:-$DFAST_ROOT/benchmarks/sd15-cpu-peers}
PYTHON_OV=${PYTHON_OV:-$PYTHON}
DFAST=${DFAST:-$DFAST_ROOT/target/debug/dfast}
[ -x "$DFAST" ] || die "no dfast binary at DFAST=$DFAST (cargo build)"
"$PYTHON_OV" -c "import openvino, numpy" 2>/dev/null || die "$PYTHON_OV lacks openvino/numpy (PYTHON_OV)"

ensure_export sd15 "$MODEL_DIR"
mkdir -p "$CONVERTED" "$OUT"
convert() { # NAME PROFILE [convert args...]
  local name=$1 profile=$2 dir=$CONVERTED/$1
  shift 2
  if [ ! -f "$dir/dfast-manifest.json" ]; then
    log "dfast convert --profile $profile -> $dir"
    "$DFAST" convert --model "$MODEL_DIR" --profile "$profile" --ep openvino --out "$dir" "$@" ||
      die "dfast convert $profile failed"
  fi
}
# int8-mixed calibrates (4 prompts x 6 steps) and keeps every UNet call's inputs, on which the int8 peers
# calibrate too (cpu_peers.py --calibration): the same prompts, latents and pipeline for both.
CALIB=$CONVERTED/calibration-inputs
convert int8-mixed-openvino int8-mixed --calibrate 4 --calibrate-steps 6 --save-calibration-inputs "$CALIB"
convert fuse-qkv-openvino fuse-qkv
convert int8-conv-openvino int8-conv --calibration-from "$CONVERTED/int8-mixed-openvino"
I8=$CONVERTED/int8-mixed-openvino
rows=(
  # the folder's own session options (int8-mixed: precision=auto, static_shapes, streams=2)
  "int8-mixed=$I8:openvino"
  # the same files as one batch-2 request on a dynamically shaped session (int8-mixed before streams)
  "int8-mixed-one-request=$I8:openvino;static_shapes=false;streams=1"
  "int8-conv=$CONVERTED/int8-conv-openvino:openvino"
  "fuse-qkv-streams=$CONVERTED/fuse-qkv-openvino:openvino;precision=auto;static_shapes=true;streams=2"
)
if [ -n "${TUNED:-}" ]; then
  convert tuned-openvino "$TUNED" --calibration-from "$I8"
  rows+=("tuned=$CONVERTED/tuned-openvino:openvino")
fi
args=()
for r in "${rows[@]}"; do args+=(--dfast "$r"); done
# The peers: OpenVINO's f32 and bf16 hints (bf16 only where the CPU computes it natively: elsewhere it runs
# as f32), its one-row requests at once (ov-split, a reference row), NNCF's int8 and optimum-intel's hybrid.
PEERS=${PEERS:-ov-f32,ov-split,ov-nncf-int8,ov-hybrid-int8}
grep -qw avx512_bf16 /proc/cpuinfo && PEERS="ov-bf16,$PEERS"

log "uptime before the rows: $(uptime)"
uptime >"$OUT/uptime-before.txt"
step "cpu_peers.py" "$PYTHON_OV" "$SCRIPTS/cpu_peers.py" --onnx "$MODEL_DIR" --out "$OUT" --peers "$PEERS" \
  --reference ov-f32 --calibration "$CALIB" --warmup "$WARMUP" --runs "$RUNS" --dfast-bin "$DFAST" "${args[@]}"
uptime >"$OUT/uptime-after.txt"

if [ "${SKIP_TUNE:-0}" != 1 ]; then
  mkdir -p "$OUT/tune"
  log "dfast tune on the SD1.5 UNet (openvino, int8 vs auto)"
  uptime >"$OUT/tune/uptime-before.txt"
  "$DFAST" tune --model "$MODEL_DIR" --ep openvino --out "$OUT/tune/local-openvino.toml" ${TUNE_ARGS:-} 2>&1 |
    tee "$OUT/tune/tune.log" || die "dfast tune failed"
  uptime >"$OUT/tune/uptime-after.txt"
fi

if [ "${SKIP_IMAGE:-0}" != 1 ]; then
  mkdir -p "$OUT/image"
  gen() { # NAME FOLDER [args...]
    local name=$1 folder=$2
    shift 2
    "$DFAST" generate --model "$folder" --ep openvino --prompt "ghibli style, a fantasy landscape with castles" --seed 0 --steps "$STEPS" \
      --out "$OUT/image/$name.png" --save-latents "$OUT/image/$name-latents.npy" "$@" 2>&1 | tail -2
  }
  log "image check: $STEPS steps, seed 0, fp32 (export, OpenVINO f32) vs int8-mixed"
  gen fp32 "$MODEL_DIR"
  gen int8-mixed "$I8"
  "$PYTHON_OV" - "$OUT/image" <<'EOF' | tee "$OUT/image/error.txt"
import sys
from pathlib import Path
import numpy as np
from PIL import Image
d = Path(sys.argv[1])
ref = np.asarray(Image.open(d / "fp32.png"), dtype=np.float64) / 127.5 - 1
img = np.asarray(Image.open(d / "int8-mixed.png"), dtype=np.float64) / 127.5 - 1
lat_ref, lat = np.load(d / "fp32-latents.npy"), np.load(d / "int8-mixed-latents.npy")
rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
print(f"decoded image (pixels scaled to [-1, 1]) relative L2, int8-mixed vs fp32: {rel(img, ref):.3e}")
print(f"final latents relative L2, int8-mixed vs fp32: {rel(lat, lat_ref):.3e}")
EOF
fi
finish
