#!/usr/bin/env bash
# One UNet step of the SD v1.5-size UNet on this CPU (batch 2 = classifier-free guidance, 64x64 latents =
# 512x512 images), timed side by side for PyTorch, ONNX Runtime, OpenVINO and dfast, each with its relative
# L2 error against PyTorch fp32 on the same inputs (experiment-scripts/cpu_peers.py).
#
#   experiment-scripts/run_cpu_peers.sh
#   DFAST=target/release/dfast DFAST_ROWS="baseline=$HOME/.cache/dfast/exports/sd15-random:cpu" \
#     OUT=benchmarks/sd15-cpu-peers experiment-scripts/run_cpu_peers.sh
#
# The weights are RANDOM (export_onnx.py --random-weights --arch sd15, and the same weights saved for
# PyTorch): latency does not depend on weight values, so the timings are those of the real architecture; the
# errors compare runtimes on the same random weights and say nothing about image quality.
#
# 1. exports the random-weight SD1.5 pipeline with export_onnx.py when EXPORTS/sd15-random is missing, and
#    saves the same weights for PyTorch (pytorch_reference.py's builder) when EXPORTS/sd15-random-pytorch is;
# 2. cpu_peers.py: inputs.npz, then one fresh process per peer, one after the other: torch-fp32 (the
#    reference), torch-bf16, torch-bf16-compile (bf16 + SDPA + fused QKV + channels_last + torch.compile, the
#    seed's CPU recipe), ort-fp32, ort-int8 (quantize_dynamic, cached in OUT/ort-int8/), ov-f32, ov-bf16;
#    then one `dfast unet-step` per DFAST_ROWS entry; with PROFILE_ORT=1 (default) ONNX Runtime's profiler
#    over one ort-fp32 / ort-int8 call -> OUT/ort_profile_fp32.md, ort_profile_int8.md;
# 3. OUT/cpu_peers.md, cpu_peers.csv, cpu_peers.json (machine, versions, date).
#
# Environment (all optional), besides bench_common.sh's PYTHON, EXPORTS, EXPORTER:
#   DFAST        dfast binary with the unet-step command (default: target/release/dfast of this checkout,
#                built with cargo build --release when cargo is here); NO_DFAST=1: no dfast rows
#   DFAST_ROWS   space-separated NAME=FOLDER[:EP] (default: the export on cpu and openvino, and fuse-qkv
#                (cpu) and int8-static (openvino) conversions, made first with `dfast convert` into
#                CONVERTED, default EXPORTS/sd15-random-converted, and reused when there)
#   MODEL_DIR    ONNX pipeline (default EXPORTS/sd15-random); PT_MODEL  its PyTorch twin
#                (default EXPORTS/sd15-random-pytorch)
#   OUT          result folder (default benchmarks/sd15-cpu-peers)
#   WARMUP, RUNS warm-up and timed calls per row (default 1 and 3); THREADS  threads for every runtime
#                (default: each one's own, all cores); PEERS  comma list (default all); TIMEOUT  s per row
#   PROFILE_ORT  1 (default) or 0
#
# How long (estimate, not measured): on the 2-core Xeon development machine an fp32 SD1.5 UNet step takes
# many seconds, the bf16 rows are slower still (no AVX512-BF16/AMX there), torch.compile's first call compiles
# for many minutes and the int8 quantization takes minutes once (cached): expect an hour or more there, far
# less on a 16-core machine. It uses every core: do not run it beside other work you care about.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-3}
MODEL_DIR=${MODEL_DIR:-$EXPORTS/sd15-random}
PT_MODEL=${PT_MODEL:-$EXPORTS/sd15-random-pytorch}
OUT=${OUT:-$DFAST_ROOT/benchmarks/sd15-cpu-peers}
CONVERTED=${CONVERTED:-$EXPORTS/sd15-random-converted}
PROFILE_ORT=${PROFILE_ORT:-1}

command -v "$PYTHON" >/dev/null || die "no Python at PYTHON=$PYTHON"
"$PYTHON" -c "import torch, diffusers, transformers, onnx, onnxruntime" 2>/dev/null ||
  die "$PYTHON lacks torch/diffusers/transformers/onnx/onnxruntime: install experiment-scripts/requirements-fixtures.txt into it, or set PYTHON"
"$PYTHON" -c "import openvino" 2>/dev/null ||
  log "openvino is not installed in $PYTHON: the ov-* rows will say so (pip install openvino)"

args=()
if [ "${NO_DFAST:-0}" != 1 ]; then
  if [ -z "${DFAST:-}" ]; then
    if command -v cargo >/dev/null; then
      log "building dfast (cargo build --release)"
      cargo build --release --quiet --manifest-path "$DFAST_ROOT/Cargo.toml" || die "cargo build --release failed"
    fi
    DFAST="$DFAST_ROOT/target/release/dfast"
  fi
  # A missing binary or unet-step command is recorded in the dfast rows, not fatal.
  args+=(--dfast-bin "$DFAST")
  if [ -z "${DFAST_ROWS:-}" ]; then
    # dfast's rows: the export as it is on the CPU EP and on OpenVINO, fuse-qkv on the CPU EP, and the
    # calibrated int8-static conversion on OpenVINO (converted once into CONVERTED, reused after).
    ensure_export sd15 "$MODEL_DIR"
    for spec in fuse-qkv:cpu int8-static:openvino; do
      p=${spec%%:*}; ep=${spec##*:}; dir=$CONVERTED/$p-$ep
      if [ ! -f "$dir/dfast-manifest.json" ]; then
        log "dfast convert --profile $p --ep $ep -> $dir"
        "$DFAST" convert --model "$MODEL_DIR" --profile "$p" --ep "$ep" --out "$dir" || die "dfast convert failed"
      fi
    done
    DFAST_ROWS="fp32=$MODEL_DIR:cpu openvino-f32=$MODEL_DIR:openvino fuse-qkv=$CONVERTED/fuse-qkv-cpu:cpu"
    DFAST_ROWS="$DFAST_ROWS int8-static=$CONVERTED/int8-static-openvino:openvino"
  fi
  for row in $DFAST_ROWS; do args+=(--dfast "$row"); done
fi
[ -n "${THREADS:-}" ] && args+=(--threads "$THREADS")
[ -n "${PEERS:-}" ] && args+=(--peers "$PEERS")
[ -n "${TIMEOUT:-}" ] && args+=(--timeout "$TIMEOUT")
[ "$PROFILE_ORT" = 1 ] && args+=(--profile-ort)

ensure_export sd15 "$MODEL_DIR"
if [ ! -f "$PT_MODEL/unet/config.json" ]; then
  [ ! -e "$PT_MODEL" ] || die "$PT_MODEL exists but holds no unet/config.json: remove it"
  log "saving the same random weights for PyTorch to $PT_MODEL"
  "$PYTHON" "$SCRIPTS/pytorch_reference.py" --_materialize "$PT_MODEL" --arch sd15 --out "$(dirname "$PT_MODEL")" ||
    die "building the PyTorch twin failed"
fi

log "SD1.5 UNet step, batch 2, 64x64 latents: peers vs dfast, $WARMUP warm-up + $RUNS timed calls per row -> $OUT"
step "cpu_peers.py" "$PYTHON" "$SCRIPTS/cpu_peers.py" --onnx "$MODEL_DIR" --pytorch "$PT_MODEL" --out "$OUT" \
  --warmup "$WARMUP" --runs "$RUNS" "${args[@]}"
finish
