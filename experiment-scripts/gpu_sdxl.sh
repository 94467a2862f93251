#!/usr/bin/env bash
# SDXL-size pipeline with RANDOM weights (latency depends on shapes, not on weight values) on one NVIDIA GPU:
# dfast on the CUDA EP in fp16 with the profiles baseline, sdpa, fuse-qkv, cuda-graph, fused and fused-graph,
# and the PyTorch reference (bf16 + SDPA eager; bf16 + SDPA + fused QKV + torch.compile, the seed's recipe) on the
# same card,
# 1024x1024, 30 steps, batch 1. Made for a GPU host reached through transfers, in two phases, so that the
# slow CPU work (export, conversion) runs while the rest of the transfers arrive:
#
#   gpu_sdxl.sh prep    export the pipeline (export_onnx.py; ONNX and the PyTorch weights from the same seed),
#                       convert the four fp16 profiles in parallel (CPU only), then the PyTorch rows (GPU);
#                       leaves $WORK/prep.done (or $WORK/prep.failed)
#   gpu_sdxl.sh bench   waits for prep, runs `dfast bench --ep cuda` (the conversions are reused, cuda-graph
#                       and fused-graph link fuse-qkv's and fused's files), then `dfast report` over the dfast
#                       and PyTorch rows; copies results.csv, report.md, report.png, the logs and two images into $OUT
#   gpu_sdxl.sh all     both, one after the other
#
# After the benchmark (EP=cuda), gpu_kernels.py profiles the UNet of each of KERNEL_PROFILES (default
# fuse-qkv,fused; the ones bench converted) and the VAE decoder of the first, and writes their kernel tables
# (JSON + Markdown) into $OUT/kernels, beside results.csv. With VAE_ISLANDS=1 the benchmark also runs the
# profile vae-islands (fuse-qkv with the VAE decoder in fp16 and fp32 range islands, `[precision.ranges]`;
# written into $WORK): its row's VAE decode time is the check of the islands' speed target (<= 40 ms on an
# H200). Both are UNVERIFIED until run on a GPU.
#
# Environment: DFAST (the dfast binary; ORT_DYLIB_PATH and LD_LIBRARY_PATH must reach ONNX Runtime's GPU build
# and the CUDA libraries for `bench`), PYTHON (default python3), WORK (default /tmp/dfast-gpu), OUT (default
# $WORK/out), STEPS, WIDTH, HEIGHT (default: models/sdxl.toml's, read by common.py: 30, 1024, 1024), WARMUP (1),
# RUNS (3), PROFILES, PT_SETTINGS, WAIT_S (how long bench waits for prep), KERNEL_PROFILES, VAE_ISLANDS.
# gpu_kernels.py needs torch and onnxruntime-gpu in $PYTHON (the host's env.sh puts them on PYTHONPATH).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
phase=${1:-all}
DFAST=${DFAST:?set DFAST to the dfast binary}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/dfast-gpu}
OUT=${OUT:-$WORK/out}
# SDXL's steps and size from its model card (models/sdxl.toml); the environment wins.
defs=$("$PYTHON" "$here/common.py" defaults --prefix CARD_ sdxl) ||
  { echo "gpu_sdxl.sh: cannot read models/sdxl.toml with $PYTHON (common.py)" >&2; exit 1; }
eval "$defs"
STEPS=${STEPS:-$CARD_STEPS}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-3}
PROFILES=${PROFILES:-baseline,sdpa,fuse-qkv,cuda-graph,fused,fused-graph}
PT_SETTINGS=${PT_SETTINGS-bf16+sdpa,bf16+sdpa+compile+fused-qkv}
WAIT_S=${WAIT_S:-480}
KERNEL_PROFILES=${KERNEL_PROFILES:-fuse-qkv,fused}
VAE_ISLANDS=${VAE_ISLANDS:-0}
EP=${EP:-cuda}                     # EP=cpu with MODEL=models/tiny-sdxl and PT_SETTINGS= is a dry run anywhere
PT_DEVICE=$([ "$EP" = cuda ] && echo cuda || echo cpu)
MODEL=${MODEL:-$WORK/sdxl-random}
# Absolute paths: bench runs from $WORK (see bench()).
WORK=$(realpath -m "$WORK"); OUT=$(realpath -m "$OUT"); MODEL=$(realpath -m "$MODEL")
[[ "$DFAST" == */* ]] && DFAST=$(realpath -m "$DFAST")
RES=$WORK/results
WIDTH=${WIDTH:-$CARD_WIDTH}
HEIGHT=${HEIGHT:-$CARD_HEIGHT}
SIZE=(--width "$WIDTH" --height "$HEIGHT")
log() { echo "== gpu_sdxl.sh $(date +%T): $*"; }

prep() {
  mkdir -p "$WORK" "$RES/dfast/converted"
  rm -f "$WORK/prep.done" "$WORK/prep.failed"
  trap 'touch "$WORK/prep.failed"' ERR
  if [ ! -f "$MODEL/unet/model.onnx" ]; then
    log "exporting the random-weight SDXL pipeline"
    rm -rf "$MODEL"
    "$PYTHON" "$here/export_onnx.py" --random-weights --arch sdxl --out "$MODEL"
  fi
  pt=
  if [ -n "$PT_SETTINGS" ]; then
    log "PyTorch reference ($PT_SETTINGS) in the background"
    "$PYTHON" "$here/pytorch_reference.py" --random-weights --arch sdxl --device "$PT_DEVICE" --settings "$PT_SETTINGS" \
      --steps "$STEPS" "${SIZE[@]}" --warmup "$WARMUP" --runs "$RUNS" --tag sdxl-gpu --out "$RES/pytorch" \
      > "$WORK/pytorch.log" 2>&1 &
    pt=$!
  fi
  log "converting the dfast profiles"
  pids=()
  for p in baseline sdpa fuse-qkv fused; do
    "$DFAST" convert --model "$MODEL" --profile "$p" --precision fp16 --ep "$EP" \
      --out "$RES/dfast/converted/$p-fp16-$EP" > "$WORK/convert-$p.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || log "a conversion failed (see $WORK/convert-*.log)"; done
  tail -n 3 "$WORK"/convert-*.log
  if [ -n "$pt" ]; then
    log "conversions done; waiting for PyTorch"
    wait "$pt" || log "pytorch_reference.py failed (see $WORK/pytorch.log)"
    tail -n 5 "$WORK/pytorch.log"
  fi
  touch "$WORK/prep.done"
  log "prep done"
}

bench() {
  waited=0
  until [ -f "$WORK/prep.done" ] || [ -f "$WORK/prep.failed" ]; do
    [ "$waited" -ge "$WAIT_S" ] && { log "prep not done after $WAIT_S s"; break; }
    sleep 5; waited=$((waited + 5))
  done
  log "prep waited ${waited} s: $(ls "$WORK" | paste -sd' ')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  profiles=$PROFILES
  if [ "$VAE_ISLANDS" = 1 ]; then
    # A profile file named without a folder: bench labels its conversion by the name it is given.
    cat > "$WORK/vae-islands.toml" <<'TOML'
name = "vae-islands"
extends = "fuse-qkv"
description = "fuse-qkv; the VAE decoder fp16 with fp32 range islands (unverified)"
[precision.ranges]
components = ["vae_decoder"]
TOML
    profiles="$profiles,vae-islands.toml"
  fi
  (cd "$WORK" && "$DFAST" bench --model "$MODEL" --ep "$EP" --precision fp16 --profile "$profiles" --steps "$STEPS" \
    "${SIZE[@]}" --warmup "$WARMUP" --runs "$RUNS" --tag sdxl-gpu --out "$RES/dfast") 2>&1 | tee "$WORK/bench.log" || true
  [ "$EP" = cuda ] && kernels
  reports=("$RES/dfast")
  [ -d "$RES/pytorch" ] && reports+=("$RES/pytorch")
  "$DFAST" report "${reports[@]}" --title "SDXL-size (random weights), ${WIDTH}x${HEIGHT}, $STEPS steps, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || echo "$EP")" \
    --out "$RES/report" || true
  mkdir -p "$OUT"
  cp "$RES/report/"{results.csv,report.md,report.png} "$OUT/" 2>/dev/null || true
  cp "$RES/dfast/results.csv" "$OUT/dfast.csv" 2>/dev/null || true
  cp "$RES/pytorch/pytorch.csv" "$OUT/pytorch.csv" 2>/dev/null || true
  cat "$WORK"/prep.log "$WORK"/convert-*.log "$WORK/pytorch.log" "$WORK/bench.log" > "$OUT/logs.txt" 2>/dev/null || true
  img=$(ls "$RES/dfast/"*.jpg 2>/dev/null | tail -n1 || true)
  [ -n "$img" ] && cp "$img" "$OUT/"
  log "summary"
  cut -d, -f1-40 "$RES/report/results.csv" 2>/dev/null | head -n 20 || true
  cat "$RES/report/report.md" 2>/dev/null || true
}

# Kernel tables of the converted UNets (and the first profile's VAE decoder), batch 2 with guidance.
kernels() {
  mkdir -p "$OUT/kernels"
  first=1
  for p in ${KERNEL_PROFILES//,/ }; do
    dir="$RES/dfast/converted/$p-fp16-$EP"
    parts=(unet)
    [ "$first" = 1 ] && parts+=(vae_decoder)
    first=0
    for part in "${parts[@]}"; do
      [ -f "$dir/$part/model.onnx" ] || { log "kernels: no $dir/$part/model.onnx"; continue; }
      log "kernel table of $part ($p)"
      "$PYTHON" "$here/gpu_kernels.py" profile "$dir/$part/model.onnx" --tag "$part-$p" --out "$OUT/kernels" \
        "${SIZE[@]}" --guidance > "$WORK/kernels-$part-$p.log" 2>&1 || log "gpu_kernels.py failed for $part ($p)"
      tail -n 30 "$WORK/kernels-$part-$p.log"
    done
  done
}

case "$phase" in
  prep) prep ;;
  bench) bench ;;
  all) prep && bench ;;
  *) echo "gpu_sdxl.sh: unknown phase '$phase' (prep, bench or all)" >&2; exit 2 ;;
esac
