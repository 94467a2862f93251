#!/usr/bin/env bash
# The CPU run of PixArt-α 512 (PixArt-XL-2-512x512's sizes: T5-XXL encoder, 28-layer DiT, SD VAE decoder) with
# random weights: a few steps, batch 1, the model card's size and scheduler (models/pixart-alpha-512.toml:
# 512x512, DPM-Solver multistep), on ONNX Runtime's CPU EP; one report.
#
#   experiment-scripts/run_pixart_cpu.sh
#
# 1. exports the random-weight pipeline with export_onnx.py --arch pixart-alpha-512 when
#    EXPORTS/pixart-alpha-512-random is missing, its T5 in T5_WEIGHTS (default int8: 8-bit weight-only
#    com.microsoft MatMulNBits, about 5.3 GB; fp32 is 19 GB on disk and in memory);
# 2. dfast bench on the cpu EP, fp32, one folder per profile (PROFILES, default baseline: every other
#    profile writes a converted copy of the whole pipeline, T5 included, to disk first);
# 3. dfast report -> OUT/results.csv, report.md, report.png; `uptime` before and after in OUT/load.txt (the
#    machine may be shared: the load averages say how much).
# No PyTorch rows (PT_SETTINGS empty by default): a PyTorch T5-XXL in fp32 needs 19 GB of memory.
# The report's text_encode_ms column is the T5 encoding (prompt and negative prompt), apart from the steps;
# peak_host_mb is the peak RSS of the process that ran the pipeline.
# 1 warm-up + 2 timed runs of 2 steps (WARMUP, RUNS, STEPS).
# Runs from any working directory; every variable bench_common.sh lists overrides a default, and T5_WEIGHTS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"
ARCH=pixart-alpha-512
EP=cpu
STEPS=${STEPS:-2}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-2}
PROFILES=${PROFILES:-baseline}
PRECISION=${PRECISION:-fp32}
T5_WEIGHTS=${T5_WEIGHTS:-int8}
OUT=${OUT:-$DFAST_ROOT/benchmarks/pixart-cpu}
TAG=${TAG:-pixart-cpu}
MODEL_DIR=${MODEL_DIR:-$EXPORTS/$ARCH-random}

card_defaults "$ARCH"
check_python
check_dfast
require_ep "$EP"
prepare_out "$OUT"
if [ -f "$MODEL_DIR/model_index.json" ] && [ -f "$MODEL_DIR/transformer/model.onnx" ]; then
  log "using the existing export $MODEL_DIR"
else
  [ ! -e "$MODEL_DIR" ] || die "$MODEL_DIR exists but holds no complete pipeline (model_index.json, transformer/model.onnx): remove it"
  log "exporting random-weight $ARCH to $MODEL_DIR (T5 weights $T5_WEIGHTS)"
  rm -rf "$MODEL_DIR.partial"
  mkdir -p "$(dirname "$MODEL_DIR")"
  "$PYTHON" "$SCRIPTS/export_onnx.py" --random-weights --arch "$ARCH" --t5-weights "$T5_WEIGHTS" \
    --out "$MODEL_DIR.partial" || die "export_onnx.py failed for $ARCH"
  mv "$MODEL_DIR.partial" "$MODEL_DIR"
fi
IFS=, read -r -a profiles <<<"$PROFILES"

{ echo "before: $(uptime)"; } >"$OUT/load.txt"
log "$ARCH on the $EP EP: $STEPS steps, ${WIDTH}x${HEIGHT}, batch $BATCH, $WARMUP warm-up + $RUNS timed runs -> $OUT"
bench_profiles "$EP" "$MODEL_DIR" "$OUT" "$PRECISION" "${profiles[@]}"
{ echo "after:  $(uptime)"; } >>"$OUT/load.txt"
report "$OUT" "$ARCH (random weights, T5 $T5_WEIGHTS), ${WIDTH}x${HEIGHT}, $STEPS steps, batch $BATCH: dfast ($EP EP)"
finish
