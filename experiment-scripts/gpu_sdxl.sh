#!/usr/bin/env bash
# SDXL-size pipeline with RANDOM weights (latency depends on shapes, not on weight values) on one NVIDIA GPU,
# for a host reached only through transfers of at most 64 MiB per call, with 15 minutes of device time in all.
#
#   gpu_sdxl.sh check   the GPU check of the CUDA-only fusions, in ONE call of at most 8 minutes (below)
#   gpu_sdxl.sh prep|bench|all   the broad benchmark: every profile, and PyTorch's pipeline rows (further below)
#
# ---- check -----------------------------------------------------------------------------------------------
# Does everything in one call, in the order of its priority, and writes each result under $OUT as soon as it
# has it (so a call cut short still returns what it measured). A deadline (DEADLINE_AT, epoch seconds, or
# DEADLINE_S after the start, default 450) guards every step: a step runs only when the time it takes (the
# estimate beside it, from the H200 timings in FIELD.md) is left, and each command is killed at the deadline.
# $OUT/summary.json and summary.md list every step as done, skipped or failed, with the reason or the result.
#   1. export (background): the SDXL-size random pipeline, the UNet first (export_onnx.py --components
#      unet,...), into $MODEL; beside it, torch.compile of the same UNet (pytorch_reference.py
#      --unet-alone-inputs, setting PT_SETTING, default bf16+sdpa+compile+fused-qkv: the field's recipe) warms
#      up and then waits, timing nothing, until step 4 tells it to time.
#   2. as soon as the UNet is exported: its fp16 conversions for $EP, `fuse-qkv` and `fused` with
#      cuda_only_fusions (profiles/fused-cuda-only.toml), in parallel (~60 s). `dfast convert` takes a pipeline
#      folder, so the UNet is converted inside $WORK/sdxl-unet: its unet/ and the other components of
#      $STANDIN (models/tiny-sdxl), of which only unet/ is used.
#   3. numerics (~40 s): `dfast unet-step` of both on the same inputs ($WORK/inputs.npz, gpu_check.py inputs:
#      batch 2 with guidance, WIDTHxHEIGHT), fused's output against fuse-qkv's: relative L2 <= 1e-2, into
#      $OUT/numerics.json.
#   4. UNet step timings on those inputs, after the export and the compilation are over (at most
#      WAIT_QUIET_S, default 150, is waited for them; a row that runs beside them says so), each
#      `dfast unet-step` with IoBinding (inputs bound once), STEP_WARMUP (5) untimed and STEP_RUNS (10) timed
#      calls, ~30 s each: fuse-qkv with a CUDA graph, fused with a CUDA graph, fuse-qkv with prefer_nhwc, then
#      torch.compile's UNet call alone (the same inputs: the same bytes from the same UNet config, checked),
#      into $OUT/unet_steps.csv and .md. numerics-<row>.json: each CUDA-graph replay's output against its
#      plain run of step 3 (numerics-torch.json: PyTorch's bf16 output against fuse-qkv's, same weights).
#   5. kernel tables (gpu_kernels.py, CUPTI) of both UNets, ~30 s each, into $OUT/kernels/; beside them the
#      whole pipeline's conversion for step 6 starts (CPU work; kernel durations are GPU time).
#   6. `dfast bench`, SDXL, STEPS (30) steps, WIDTHxHEIGHT, WARMUP 1, RUNS 3: fused with cuda_only_fusions
#      and a CUDA graph (profiles/fused-cuda-only-graph.toml), ~90 s; then, with ~150 s left, the same with
#      the VAE decoder in fp16 with fp32 range islands (VAE_ISLANDS=0 leaves it out); into $OUT/bench/.
#   7. TensorRT probe (`import tensorrt`, `ldconfig -p | grep libnvinfer`) into $OUT/tensorrt.json; if it is
#      there and ~240 s are left, a `dfast bench --ep tensorrt` row of fuse-qkv.
#   8. with ~150 s left: SD1.5 (export of its UNet, 512x512), fused with cuda_only_fusions against ONNX
#      Runtime's SD optimizer (gpu_check.py ort-optimize) on the same fuse-qkv fp32 graph, both fp16 with a
#      CUDA graph: rows sd15-* and numerics-sd15.json.
# Dry run anywhere (what tests/gpu_check.rs runs): EP=cpu MODEL=models/tiny-sdxl WIDTH=64 HEIGHT=64 STEPS=2.
# The CUDA-graph rows then run with IoBinding only and the prefer_nhwc row as a plain run; torch rows and the
# export only where $PYTHON has torch (else skipped, with that reason); no kernel tables (CUDA only); SD1.5 on
# models/tiny-sd where $PYTHON has onnxruntime.transformers. Needs on the GPU host: assemble.sh's
# /tmp/ort-gpu/env.sh sourced (ONNX Runtime GPU for dfast and Python, diffusers), torch (installed there).
#
# The whole sequence from the development machine (the exact commands, sizes and budget: benchmarks/README.md,
# "The GPU check in one call"): build dfast (release, stripped) and pack ONNX Runtime's GPU package here with
# models/ and benchmarks/ moved out of the working tree, so that each call's checkout is ~3 MiB and a part
# can take the rest of the 64 MiB (parts of ~58 MiB instead of ~27: four instead of eight); send three parts,
# one per call; put back models/*.toml, models/tiny-sdxl and models/tiny-sd; in the last call, carrying dfast,
# the wheels, assemble.sh and the last part: assemble.sh, then `BUNDLE=$OUT ... gpu_sdxl.sh check`.
#
# ---- prep | bench | all -----------------------------------------------------------------------------------
# dfast on the CUDA EP in fp16 with the profiles baseline, sdpa, fuse-qkv, cuda-graph, fused and fused-graph,
# and the PyTorch reference (bf16 + SDPA eager; bf16 + SDPA + fused QKV + torch.compile, the seed's recipe) on
# the same card, 1024x1024, 30 steps, batch 1, in two phases, so that the slow CPU work (export, conversion)
# runs while the rest of the transfers arrive:
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
# and the CUDA libraries), PYTHON (default python3), WORK (default /tmp/dfast-gpu), OUT (default $WORK/out),
# STEPS, WIDTH, HEIGHT (default: models/sdxl.toml's, read by common.py: 30, 1024, 1024), WARMUP (1), RUNS (3),
# EP (cuda; cpu for a dry run), MODEL (default $WORK/sdxl-random, exported when missing). prep/bench/all:
# PROFILES, PT_SETTINGS, WAIT_S (how long bench waits for prep), KERNEL_PROFILES, VAE_ISLANDS (0). check:
# PRECISION (fp16), PT_SETTING, STANDIN, STEP_WARMUP, STEP_RUNS, WAIT_QUIET_S, VAE_ISLANDS (1), SD15 (1),
# SD15_MODEL (default $WORK/sd15-random, its UNet exported when missing), SD15_STANDIN (models/tiny-sd),
# SD15_WIDTH / SD15_HEIGHT (models/sd15.toml's), TORCH_WAIT_S (90), DEADLINE_S / DEADLINE_AT, BUNDLE (a folder
# that gets summary.md/.json, unet_steps.md, numerics.json and check.tar.gz of $OUT after every step: the
# device call's $OUT, which brings back at most 8 files). gpu_kernels.py needs torch and onnxruntime-gpu in $PYTHON (the host's env.sh puts
# them on PYTHONPATH).
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
ISLANDS_ASKED=${VAE_ISLANDS-}      # check's default is 1, prep/bench's 0
VAE_ISLANDS=${VAE_ISLANDS:-0}
EP=${EP:-cuda}                     # EP=cpu with MODEL=models/tiny-sdxl and PT_SETTINGS= is a dry run anywhere
PT_DEVICE=$([ "$EP" = cuda ] && echo cuda || echo cpu)
MODEL_GIVEN=${MODEL:+1}
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


# ---- check: the one-call GPU check (see the header) --------------------------------------------------------

gc() { "$PYTHON" "$here/gpu_check.py" "$@"; }
left() { echo $((DEADLINE - $(date +%s))); }
elapsed() { echo $(($(date +%s) - T0)); }

# record ID STATUS REASON SECONDS: one step's outcome into $OUT/summary.json and summary.md.
record() {
  gc step "$SUMMARY" "$1" "$2" "$3" --seconds "${4:-0}" || log "cannot record step $1 in $SUMMARY"
  log "$1: $2${3:+: $3}"
  bundle
}

# With BUNDLE set (the device call's $OUT, which brings back at most 8 files): the summary, the tables and
# the whole of $OUT as check.tar.gz, refreshed after every step (each file replaced whole, by a rename).
bundle() {
  if [ -z "${BUNDLE:-}" ]; then return 0; fi
  local f
  mkdir -p "$BUNDLE"
  tar -czf "$WORK/check.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" 2> /dev/null || return 0
  for f in "$WORK/check.tar.gz" "$OUT/summary.md" "$OUT/summary.json" "$OUT/unet_steps.md" "$OUT/numerics.json"; do
    if [ -f "$f" ]; then cp "$f" "$BUNDLE/$(basename "$f").partial" && mv "$BUNDLE/$(basename "$f").partial" "$BUNDLE/$(basename "$f")"; fi
  done
}

# cap SECONDS: SECONDS, or what is left before the deadline (less 3 s) when that is shorter; at least 1.
cap() {
  local l=$(($(left) - 3))
  if [ "$l" -lt "$1" ]; then echo $((l < 1 ? 1 : l)); else echo "$1"; fi
}

# bounded SECONDS COMMAND...: COMMAND, killed after SECONDS or at the deadline, whichever comes first (124).
bounded() {
  local c
  c=$(cap "$1")
  shift
  timeout --kill-after=5 "$c" "$@"
}

# run_step ID NEED FUNCTION [ARGS...]: FUNCTION, its output in $WORK/logs/ID.log, when NEED seconds are left.
# The function may set STATUS (done, skipped) and REASON (the result, or why it was skipped); a non-zero
# return is a failure. The log's tail goes to $OUT/logs/ at once.
run_step() {
  local id=$1 need=$2 t rc
  shift 2
  t=$(date +%s)
  if [ "$(left)" -lt "$need" ]; then
    record "$id" skipped "not enough time left: $(left) s, it takes about $need s" 0
    return 0
  fi
  STATUS=done
  REASON=
  log "$id ($(left) s left)"
  if "$@" >> "$WORK/logs/$id.log" 2>&1; then rc=0; else rc=$?; fi
  if [ "$rc" != 0 ]; then
    STATUS=failed
    if [ "$rc" = 124 ]; then REASON="${REASON:+$REASON; }timed out at the deadline"; fi
    REASON="${REASON:+$REASON; }exit status $rc, see logs/$id.log: $(tail -n 2 "$WORK/logs/$id.log" | tr '\n' ' ' | cut -c1-300)"
  fi
  tail -n 200 "$WORK/logs/$id.log" > "$OUT/logs/$id.log" 2>/dev/null || true
  record "$id" "$STATUS" "$REASON" $(($(date +%s) - t))
}

skip() { STATUS=skipped; REASON=$1; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
json_get() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# has_python MODULE...: $PYTHON finds these top-level modules (found, not imported: importing torch takes seconds).
has_python() {
  "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in sys.argv[1:]) else 1)' \
    "$@" > /dev/null 2>&1
}

# wait_until SECONDS_TO_KEEP CONDITION...: polls CONDITION each second while more than SECONDS_TO_KEEP are left.
wait_until() {
  local keep=$1
  shift
  until "$@"; do
    [ "$(left)" -gt "$keep" ] || return 1
    sleep 1
  done
}

# A pipeline folder for `dfast convert` around an exported UNet: its unet/, and the other components of a
# stand-in pipeline of the same kind (only unet/ of the conversion is used).
unet_folder() {
  local model=$1 standin=$2 dest=$3 entry
  rm -rf "$dest"
  mkdir -p "$dest"
  for entry in "$standin"/*; do
    if [ "$(basename "$entry")" != unet ]; then ln -s "$(realpath "$entry")" "$dest/"; fi
  done
  ln -s "$model/unet" "$dest/unet"
}

complete_pipeline() { [ -f "$MODEL/vae_decoder/model.onnx" ] && [ ! -e "$MODEL.exporting" ]; }
unet_exported() { [ -f "$MODEL/unet/model.onnx" ] && { [ ! -e "$MODEL.exporting" ] || grep -q '^unet: exported in' "$WORK/logs/export.log"; }; }
export_over() { ! alive "${EXPORT_PID:-}"; }
torch_ready() { [ -f "$WORK/torch.ready" ] || ! alive "${TORCH_PID:-}"; }

# 1. The export, UNet first, and torch.compile's warm-up, both in the background.
start_export() {
  EXPORT_PID=
  EXPORT_WHY=
  if [ -f "$MODEL/unet/model.onnx" ] && [ ! -e "$MODEL.exporting" ]; then
    EXPORT_WHY="MODEL=$MODEL holds a pipeline already: not exported"
    return
  fi
  if ! has_python torch diffusers transformers; then
    EXPORT_WHY="torch, diffusers or transformers is not installed for $PYTHON: nothing to export with"
    return
  fi
  if [ "$(left)" -lt 200 ]; then EXPORT_WHY="not enough time left: $(left) s, it takes about 200 s"; return; fi
  rm -rf "$MODEL"
  mkdir -p "$(dirname "$MODEL")"
  touch "$MODEL.exporting"
  log "exporting the random-weight SDXL pipeline, the UNet first (background)"
  # timeout itself in the background (not a function's subshell), so that killing $EXPORT_PID ends the export.
  timeout --kill-after=5 "$(cap 900)" "$PYTHON" "$here/export_onnx.py" --random-weights --arch sdxl \
    --components unet,text_encoder,text_encoder_2,vae_decoder --out "$MODEL" > "$WORK/logs/export.log" 2>&1 &
  EXPORT_PID=$!
}

start_torch() {
  TORCH_PID=
  TORCH_WHY=
  rm -f "$WORK/torch.ready" "$WORK/torch.go" "$WORK/torch.json" "$WORK/inputs-torch.npz" "$WORK/out-torch.npy"
  if [ -z "$PT_SETTING" ]; then TORCH_WHY="PT_SETTING is empty"; return; fi
  if ! has_python torch diffusers numpy; then
    TORCH_WHY="torch, diffusers or numpy is not installed for $PYTHON"
    return
  fi
  if [ "$(left)" -lt 150 ]; then TORCH_WHY="not enough time left: $(left) s, it takes about 150 s"; return; fi
  # The export's weights when this script exports them (export_onnx.random_unet), else MODEL's UNet config.
  local src=(--random-weights --arch sdxl)
  if [ -n "$MODEL_GIVEN" ]; then src=(--model "$MODEL"); fi
  log "torch.compile warm-up of the UNet ($PT_SETTING, background)"
  timeout --kill-after=5 "$(cap 900)" "$PYTHON" "$here/pytorch_reference.py" "${src[@]}" --device "$PT_DEVICE" --settings "$PT_SETTING" \
    --unet-alone-inputs "$WORK/inputs-torch.npz" "${SIZE[@]}" --warmup 2 --unet-alone-runs "$STEP_RUNS" \
    --ready "$WORK/torch.ready" --go "$WORK/torch.go" --go-timeout "$(left)" --json "$WORK/torch.json" \
    --output "$WORK/out-torch.npy" > "$WORK/logs/torch.log" 2>&1 &
  TORCH_PID=$!
}

# The export's step is recorded once it is over (or at the first step that has to wait for it in vain).
EXPORT_RECORDED=
record_export() {
  if [ -n "$EXPORT_RECORDED" ]; then return; fi
  if [ -z "$EXPORT_PID" ]; then
    record export skipped "$EXPORT_WHY" 0
  elif alive "$EXPORT_PID"; then
    return
  elif wait "$EXPORT_PID"; then
    rm -f "$MODEL.exporting"
    record export done "$(grep -E '^(unet|vae_decoder): exported in' "$WORK/logs/export.log" | paste -sd';')" "$(elapsed)"
  else
    record export failed "exit status $?, see logs/export.log: $(tail -n 2 "$WORK/logs/export.log" | tr '\n' ' ' | cut -c1-300)" "$(elapsed)"
  fi
  tail -n 100 "$WORK/logs/export.log" > "$OUT/logs/export.log" 2>/dev/null || true
  EXPORT_RECORDED=1
}

TORCH_RECORDED=
record_torch_warmup() {
  if [ -n "$TORCH_RECORDED" ]; then return; fi
  if [ -z "$TORCH_PID" ]; then
    record torch-warmup skipped "$TORCH_WHY" 0
  elif [ -f "$WORK/torch.ready" ]; then
    record torch-warmup done "first call (compilation) $(json_get "$WORK/torch.ready" first_run_s | cut -c1-6) s" "$(elapsed)"
  elif alive "$TORCH_PID"; then
    record torch-warmup failed "not warmed up when the timings could wait no longer" "$(elapsed)"
  else
    record torch-warmup failed "see logs/torch.log: $(tail -n 2 "$WORK/logs/torch.log" | tr '\n' ' ' | cut -c1-300)" "$(elapsed)"
  fi
  tail -n 100 "$WORK/logs/torch.log" > "$OUT/logs/torch.log" 2>/dev/null || true
  TORCH_RECORDED=1
}

# 2. The UNet's conversions, in parallel.
convert_unets() {
  local t name pids=() names=(fuse-qkv fused) i rc
  t=$(date +%s)
  wait_until 60 eval 'unet_exported || export_over' || true
  if ! unet_exported; then
    record_export
    for name in "${names[@]}"; do record "convert-$name" skipped "no exported UNet in $MODEL" 0; done
    return
  fi
  if [ "$(left)" -lt 60 ]; then
    for name in "${names[@]}"; do record "convert-$name" skipped "not enough time left: $(left) s" 0; done
    return
  fi
  log "UNet ready after $(elapsed) s; converting it (fuse-qkv, fused with cuda_only_fusions)"
  unet_folder "$MODEL" "$STANDIN" "$WORK/sdxl-unet"
  rm -rf "$WORK/unet-conv"
  mkdir -p "$WORK/unet-conv"
  for name in "${names[@]}"; do
    (
      args=(--profile fuse-qkv)
      if [ "$name" = fused ]; then args=(--profile "$FUSED_PROFILE" "${FORCE[@]}"); fi
      bounded 400 "$DFAST" convert --model "$WORK/sdxl-unet" "${args[@]}" --precision "$PRECISION" --ep "$EP" \
        --out "$WORK/unet-conv/$name"
    ) > "$WORK/logs/convert-$name.log" 2>&1 &
    pids+=($!)
  done
  for i in 0 1; do
    name=${names[$i]}
    wait "${pids[$i]}" && rc=0 || rc=$?
    tail -n 50 "$WORK/logs/convert-$name.log" > "$OUT/logs/convert-$name.log" 2>/dev/null || true
    if [ "$rc" = 0 ]; then
      record "convert-$name" done "$(grep -E '^unet ' "$WORK/logs/convert-$name.log" | tr -s ' ' | cut -c1-300)" $(($(date +%s) - t))
    else
      record "convert-$name" failed "see logs/convert-$name.log: $(tail -n 1 "$WORK/logs/convert-$name.log" | cut -c1-300)" $(($(date +%s) - t))
    fi
  done
}

make_inputs() {
  [ -f "$WORK/inputs.npz" ] || gc inputs --config "$MODEL/unet/config.json" "${SIZE[@]}" --out "$WORK/inputs.npz"
}

# 3. Numerics: one plain call of each conversion on the same inputs.
numerics() {
  local name
  for name in fuse-qkv fused; do
    if [ ! -f "$WORK/unet-conv/$name/dfast-manifest.json" ]; then skip "no $name conversion"; return 0; fi
  done
  make_inputs || return 1
  for name in fuse-qkv fused; do
    bounded 150 "$DFAST" unet-step "$WORK/unet-conv/$name" --inputs "$WORK/inputs.npz" --ep "$EP" --warmup 0 \
      --runs 1 --json --output "$WORK/out-$name.npy" || return 1
  done
  REASON=$(gc rel-l2 "$WORK/out-fused.npy" "$WORK/out-fuse-qkv.npy" --bound 1e-2 --out "$OUT/numerics.json" \
    --label-a "fused (cuda_only_fusions) $PRECISION $EP" --label-ref "fuse-qkv $PRECISION $EP") || return 1
}

# The wait for a quiet machine before the timings; what was still busy goes into the rows' notes.
BUSY=
wait_quiet() {
  local until_t=$(($(date +%s) + WAIT_QUIET_S))
  quiet() { export_over && torch_ready; }
  # Up to WAIT_QUIET_S, and never into the last 200 s.
  until quiet || [ "$(date +%s)" -ge "$until_t" ] || [ "$(left)" -le 200 ]; do sleep 1; done
  record_export
  BUSY=
  if alive "${EXPORT_PID:-}"; then BUSY="export still running"; fi
  if alive "${TORCH_PID:-}" && [ ! -f "$WORK/torch.ready" ]; then BUSY="${BUSY:+$BUSY, }torch.compile still running"; fi
  if [ -n "$TORCH_PID" ] && [ -f "$WORK/torch.ready" ]; then record_torch_warmup; fi
}

# time_row ROW MODEL INPUTS NOTE [EP_OPTION...]: one timed `dfast unet-step` row, and its output.
time_row() {
  local row=$1 model=$2 inputs=$3 note=$4 opts=() o
  shift 4
  if [ ! -e "$model" ]; then skip "no $model"; return 0; fi
  if [ ! -f "$inputs" ]; then skip "no inputs ($inputs)"; return 0; fi
  for o in "$@"; do opts+=(--ep-option "$o"); done
  bounded 200 "$DFAST" unet-step "$model" --inputs "$inputs" --ep "$EP" "${opts[@]}" --warmup "$STEP_WARMUP" \
    --runs "$STEP_RUNS" --json --output "$WORK/out-$row.npy" > "$WORK/$row.json" || return 1
  REASON=$(gc row --csv "$ROWS" --name "$row" --report "$WORK/$row.json" --device "$DEVICE" \
    --note "$note${BUSY:+; beside: $BUSY}") || return 1
}

# A CUDA-graph row's output against its conversion's plain run (step 3), into numerics-ROW.json.
replay_numerics() {
  local row=$1 plain=$2
  if [ -f "$WORK/out-$row.npy" ] && [ -f "$WORK/out-$plain.npy" ]; then
    gc rel-l2 "$WORK/out-$row.npy" "$WORK/out-$plain.npy" --bound 1e-2 --out "$OUT/numerics-$row.json" \
      --label-a "$row" --label-ref "$plain, one plain call" > /dev/null || true
  fi
}

torch_row() {
  if [ -z "$TORCH_PID" ]; then skip "$TORCH_WHY"; return 0; fi
  local until_t=$(($(date +%s) + TORCH_WAIT_S))
  until torch_ready || [ "$(date +%s)" -ge "$until_t" ] || [ "$(left)" -le 15 ]; do sleep 1; done
  record_torch_warmup
  if [ ! -f "$WORK/torch.ready" ]; then skip "torch.compile did not warm up (logs/torch.log)"; return 0; fi
  touch "$WORK/torch.go"
  wait_until 5 eval '! alive "$TORCH_PID"' || { REASON="no timings before the deadline"; return 1; }
  wait "$TORCH_PID" || { REASON="pytorch_reference.py failed (logs/torch.log)"; cat "$WORK/logs/torch.log"; return 1; }
  local same="the same inputs as dfast's rows (same bytes)"
  if ! cmp -s "$WORK/inputs-torch.npz" "$WORK/inputs.npz"; then same="inputs NOT the same bytes as dfast's"; fi
  REASON=$(gc row --runtime pytorch --csv "$ROWS" --name torch-unet-alone --report "$WORK/torch.json" --device "$DEVICE" \
    --note "$PT_SETTING, UNet call alone; $same") || return 1
  if [ -z "$MODEL_GIVEN" ] && [ -f "$WORK/out-torch.npy" ] && [ -f "$WORK/out-fuse-qkv.npy" ]; then
    gc rel-l2 "$WORK/out-torch.npy" "$WORK/out-fuse-qkv.npy" --bound 1e-2 --out "$OUT/numerics-torch.json" \
      --label-a "torch $PT_SETTING" --label-ref "fuse-qkv $PRECISION, one plain call" > /dev/null || true
  fi
}

# 5. Kernel tables (CUDA only).
kernels() {
  local name=$1 model=$WORK/unet-conv/$1/unet/model.onnx
  if [ "$EP" != cuda ]; then skip "EP=$EP: kernel tables need the CUDA EP (CUPTI through torch.profiler)"; return 0; fi
  if ! has_python torch onnxruntime; then skip "torch or onnxruntime is not installed for $PYTHON"; return 0; fi
  if [ ! -f "$model" ]; then skip "no $name conversion"; return 0; fi
  bounded 120 "$PYTHON" "$here/gpu_kernels.py" profile "$model" --tag "unet-$name" --out "$OUT/kernels" \
    "${SIZE[@]}" --guidance || return 1
  REASON=$("$PYTHON" -c 'import json, sys; s = json.load(open(sys.argv[1]))["summary"]
print("%.2f ms of GPU kernels per call, %.0f kernels" % (s["gpu_ms_per_run"], s["kernels_per_run"]))' \
    "$OUT/kernels/kernels-unet-$name.json")
}

# 6. The whole pipeline's conversion for bench, started beside the kernel tables: bench finds it by its
# conversion key and links its files under the graph profile's name.
BENCH_CONV_PID=
start_bench_conversion() {
  if ! complete_pipeline || [ "$(left)" -lt 120 ]; then return; fi
  mkdir -p "$RES/bench/converted"
  timeout --kill-after=5 "$(cap 400)" "$DFAST" convert --model "$MODEL" --profile "$FUSED_PROFILE" "${FORCE[@]}" \
    --precision "$PRECISION" --ep "$EP" --out "$RES/bench/converted/fused-cuda-only-$PRECISION-$EP" > "$WORK/logs/bench-convert.log" 2>&1 &
  BENCH_CONV_PID=$!
}

bench_row() {
  local profile=$1
  if ! complete_pipeline; then skip "the pipeline's export is not complete"; return 0; fi
  if [ -n "$BENCH_CONV_PID" ]; then
    wait_until 60 eval '! alive "$BENCH_CONV_PID"' || true
    wait "$BENCH_CONV_PID" || cat "$WORK/logs/bench-convert.log"
    BENCH_CONV_PID=
  fi
  (cd "$WORK" && bounded 400 "$DFAST" bench --model "$MODEL" --ep "$EP" --precision "$PRECISION" --profile "$profile" \
    --steps "$STEPS" "${SIZE[@]}" --warmup "$WARMUP" --runs "$RUNS" --tag gpu-check --out "$RES/bench") || return 1
  mkdir -p "$OUT/bench"
  cp "$RES/bench/results.csv" "$OUT/bench/results.csv"
  local img
  img=$(ls -t "$RES/bench/"*.jpg 2>/dev/null | head -n 1 || true)
  if [ -n "$img" ]; then cp "$img" "$OUT/bench/"; fi
  "$DFAST" report "$RES/bench" --title "GPU check, SDXL-size (random weights), ${WIDTH}x${HEIGHT}, $STEPS steps, $DEVICE" \
    --out "$OUT/bench/report" > /dev/null || true
  # The newest row is the last.
  REASON=$(gc bench-rows "$RES/bench/results.csv" | tr ';' '\n' | tail -n 1 | sed 's/^ *//')
}

# 7. TensorRT: is it on the host?
tensorrt() {
  local py py_ok=0 libs
  if py=$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>&1); then py_ok=1; fi
  libs=$(ldconfig -p 2>/dev/null | grep -o 'libnvinfer\.so[.0-9]*' | sort -u | paste -sd' ' || true)
  "$PYTHON" -c 'import json, sys
ok, py, libs = sys.argv[2] == "1", sys.argv[3], sys.argv[4].split()
json.dump({"present": ok or bool(libs), "python_tensorrt": py if ok else None,
           "python_error": None if ok else py.strip().splitlines()[-1:], "ldconfig_libnvinfer": libs},
          open(sys.argv[1], "w"), indent=1)' "$OUT/tensorrt.json" "$py_ok" "$py" "$libs" || return 1
  if [ "$py_ok" != 1 ] && [ -z "$libs" ]; then
    REASON="absent: no libnvinfer in ldconfig -p, and $PYTHON cannot import tensorrt ($(echo "$py" | tail -n 1 | cut -c1-120))"
    return 0
  fi
  if [ "$py_ok" = 1 ]; then REASON="present (python tensorrt $py"; else REASON="present (no python tensorrt"; fi
  REASON="$REASON; ldconfig: ${libs:-none})"
  if [ "$EP" != cuda ]; then REASON="$REASON; EP=$EP: no tensorrt row in a dry run"; return 0; fi
  if [ "$(left)" -lt 240 ]; then REASON="$REASON; no row: $(left) s left, an engine build takes minutes"; return 0; fi
  if [ "$py_ok" = 1 ]; then
    local trt_libs
    trt_libs=$("$PYTHON" -c 'import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))' 2>/dev/null || true)
    if [ -n "$trt_libs" ]; then export LD_LIBRARY_PATH="$trt_libs:${LD_LIBRARY_PATH:-}"; fi
  fi
  (cd "$WORK" && bounded 400 "$DFAST" bench --model "$MODEL" --ep tensorrt --precision fp16 --profile fuse-qkv \
    --steps "$STEPS" "${SIZE[@]}" --warmup "$WARMUP" --runs "$RUNS" --tag gpu-check-tensorrt --out "$RES/bench-trt") || return 1
  mkdir -p "$OUT/bench-tensorrt"
  cp "$RES/bench-trt/results.csv" "$OUT/bench-tensorrt/results.csv"
  REASON="$REASON; $(gc bench-rows "$RES/bench-trt/results.csv")"
}

# 8. SD1.5: fused against ONNX Runtime's SD optimizer on the same fuse-qkv fp32 graph.
sd15() {
  if ! has_python onnx onnxruntime; then
    skip "onnx or onnxruntime (ONNX Runtime's SD optimizer) is not installed for $PYTHON"
    return 0
  fi
  if [ ! -f "$SD15_MODEL/unet/model.onnx" ]; then
    if ! has_python torch diffusers transformers; then skip "no $SD15_MODEL and no torch to export it"; return 0; fi
    rm -rf "$SD15_MODEL"
    bounded 200 "$PYTHON" "$here/export_onnx.py" --random-weights --arch sd15 --components unet --out "$SD15_MODEL" || return 1
  fi
  unet_folder "$SD15_MODEL" "$SD15_STANDIN" "$WORK/sd15-unet"
  rm -rf "$WORK/sd15-conv"
  mkdir -p "$WORK/sd15-conv"
  bounded 200 "$DFAST" convert --model "$WORK/sd15-unet" --profile fuse-qkv --precision fp32 --ep "$EP" \
    --out "$WORK/sd15-conv/fuse-qkv-fp32" &
  local fq=$!
  bounded 200 "$DFAST" convert --model "$WORK/sd15-unet" --profile "$FUSED_PROFILE" "${FORCE[@]}" --precision "$PRECISION" \
    --ep "$EP" --out "$WORK/sd15-conv/fused" || return 1
  wait "$fq" || return 1
  bounded 200 "$PYTHON" "$here/gpu_check.py" ort-optimize "$WORK/sd15-conv/fuse-qkv-fp32/unet/model.onnx" \
    "$WORK/sd15-conv/ort/model.onnx" --ep "$EP" --precision "$PRECISION" || return 1
  local w=${SD15_WIDTH:-} h=${SD15_HEIGHT:-}
  eval "$("$PYTHON" "$here/common.py" defaults --prefix CARD15_ sd15)"
  gc inputs --config "$SD15_MODEL/unet/config.json" --width "${w:-$CARD15_WIDTH}" --height "${h:-$CARD15_HEIGHT}" \
    --out "$WORK/sd15-inputs.npz" || return 1
  local r1 r2
  time_row sd15-fused-graph "$WORK/sd15-conv/fused" "$WORK/sd15-inputs.npz" "SD1.5 fused, cuda_only_fusions$GRAPH_NOTE" "${GRAPH[@]}" || return 1
  r1=$REASON
  time_row sd15-ort-optimizer-graph "$WORK/sd15-conv/ort/model.onnx" "$WORK/sd15-inputs.npz" \
    "SD1.5 ONNX Runtime SD optimizer on fuse-qkv fp32, then $PRECISION$GRAPH_NOTE" "${GRAPH[@]}" || return 1
  r2=$REASON
  gc rel-l2 "$WORK/out-sd15-ort-optimizer-graph.npy" "$WORK/out-sd15-fused-graph.npy" --bound 1e-2 \
    --out "$OUT/numerics-sd15.json" --label-a "ONNX Runtime SD optimizer $PRECISION" --label-ref "dfast fused $PRECISION" > /dev/null || true
  REASON="$r1; $r2"
}

check_cleanup() {
  local pid
  for pid in "${EXPORT_PID:-}" "${TORCH_PID:-}" "${BENCH_CONV_PID:-}"; do
    if alive "$pid"; then kill "$pid" 2> /dev/null || true; fi
  done
  record_export 2> /dev/null || true
  gc finish "$SUMMARY" "not reached: the run ended first ($(left) s before the deadline)" || true
  for f in export torch; do tail -n 100 "$WORK/logs/$f.log" > "$OUT/logs/$f.log" 2> /dev/null || true; done
  bundle
  log "summary ($(elapsed) s, $(left) s before the deadline)"
  cat "$OUT/summary.md" 2> /dev/null || true
}

check() {
  T0=$(date +%s)
  DEADLINE=${DEADLINE_AT:-$((T0 + ${DEADLINE_S:-450}))}
  PRECISION=${PRECISION:-fp16}
  PT_SETTING=${PT_SETTING-bf16+sdpa+compile+fused-qkv}
  STANDIN=$(realpath -m "${STANDIN:-$here/../models/tiny-sdxl}")
  STEP_WARMUP=${STEP_WARMUP:-5}
  STEP_RUNS=${STEP_RUNS:-10}
  WAIT_QUIET_S=${WAIT_QUIET_S:-150}
  TORCH_WAIT_S=${TORCH_WAIT_S:-90}
  SD15=${SD15:-1}
  SD15_MODEL=$(realpath -m "${SD15_MODEL:-$WORK/sd15-random}")
  SD15_STANDIN=$(realpath -m "${SD15_STANDIN:-$here/../models/tiny-sd}")
  local islands=${ISLANDS_ASKED:-1}
  FUSED_PROFILE=$here/../profiles/fused-cuda-only.toml
  BENCH_PROFILE=$here/../profiles/fused-cuda-only-graph.toml
  FORCE=()
  GRAPH=(cuda_graph=true)
  GRAPH_NOTE=", CUDA graph"
  NHWC=(prefer_nhwc=true)
  NHWC_NOTE="prefer_nhwc"
  if [ "$EP" != cuda ]; then
    # A dry run: the CUDA-only profile converted anyway (its CUDA-only passes stay off there), IoBinding in
    # place of the CUDA graph, the plain path in place of prefer_nhwc, a bench profile made for this EP.
    FORCE=(--force)
    GRAPH=(io_binding=true)
    GRAPH_NOTE=", dry run on $EP: IoBinding, no CUDA graph"
    NHWC=(io_binding=false)
    NHWC_NOTE="dry run on $EP: the plain path (prefer_nhwc is a CUDA EP option)"
    BENCH_PROFILE=$WORK/check-graph-$EP.toml
  fi
  if [ -n "${BUNDLE:-}" ] && [ "$(realpath -m "$BUNDLE")" = "$OUT" ]; then
    echo "gpu_sdxl.sh: BUNDLE and OUT are the same folder ($OUT); BUNDLE gets a copy of OUT's results" >&2
    exit 2
  fi
  if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/summary.json" ]; then
    echo "gpu_sdxl.sh: OUT=$OUT holds other files than an earlier check's results; choose another OUT" >&2
    exit 2
  fi
  rm -rf "$OUT" "$WORK/logs" "$WORK/inputs.npz" "$WORK"/out-*.npy "$RES/bench" "$RES/bench-trt"
  mkdir -p "$WORK/logs" "$OUT/logs" "$OUT/kernels" "$RES"
  if [ "$EP" != cuda ]; then
    printf 'name = "check-graph-%s"\nextends = "%s"\ndescription = "dry run: fused-cuda-only made for %s"\neps = ["%s"]\n' \
      "$EP" "$(realpath "$FUSED_PROFILE")" "$EP" "$EP" > "$BENCH_PROFILE"
  fi
  SUMMARY=$OUT/summary.json
  ROWS=$OUT/unet_steps.csv
  DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1 || true)
  if [ -z "$DEVICE" ]; then DEVICE=$(cd "$here" && "$PYTHON" -c 'import common; print(common.cpu_name())' 2> /dev/null || echo "$EP"); fi
  {
    nvidia-smi 2> /dev/null || echo "no nvidia-smi"
    "$DFAST" --version
    "$PYTHON" --version
    "$PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -n 1
    "$PYTHON" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' 2>&1 | tail -n 1
  } > "$OUT/device.txt" 2>&1 || true
  gc plan "$SUMMARY" \
    "export=export the SDXL-size random pipeline, UNet first (background)" \
    "torch-warmup=torch.compile warm-up of the UNet beside the export" \
    "convert-fuse-qkv=convert the UNet: fuse-qkv $PRECISION $EP" \
    "convert-fused=convert the UNet: fused with cuda_only_fusions $PRECISION $EP" \
    "numerics=fused vs fuse-qkv on the same inputs, relative L2 <= 1e-2" \
    "step-fuse-qkv-graph=UNet step: fuse-qkv$GRAPH_NOTE" \
    "step-fused-graph=UNet step: fused$GRAPH_NOTE" \
    "step-fuse-qkv-nhwc=UNet step: fuse-qkv, $NHWC_NOTE" \
    "step-torch=UNet step: PyTorch ($PT_SETTING), the UNet call alone" \
    "kernels-fuse-qkv=kernel table: fuse-qkv" \
    "kernels-fused=kernel table: fused" \
    "bench-fused-graph=bench: fused with cuda_only_fusions and a CUDA graph, end to end" \
    "bench-vae-islands=bench: the same with the VAE decoder's fp16 range islands" \
    "tensorrt=TensorRT probe (and a tensorrt row if present)" \
    "sd15=SD1.5: fused vs ONNX Runtime's SD optimizer on the same graph" \
    --meta "ep=$EP" --meta "precision=$PRECISION" --meta "device=$DEVICE" --meta "model=$MODEL" \
    --meta "size=${WIDTH}x${HEIGHT}" --meta "deadline_s=$((DEADLINE - T0))" \
    --meta "started=$(date -u +%Y-%m-%dT%H:%M:%SZ)" || exit 1
  trap check_cleanup EXIT
  log "check on $DEVICE, EP=$EP, deadline in $(left) s"

  # 1.
  start_export
  if [ -z "$EXPORT_PID" ]; then record_export; fi
  start_torch
  if [ -z "$TORCH_PID" ]; then record_torch_warmup; fi
  # 2.
  convert_unets
  # 3.
  run_step numerics 40 numerics
  # 4.
  wait_quiet
  run_step step-fuse-qkv-graph 40 time_row step-fuse-qkv-graph "$WORK/unet-conv/fuse-qkv" "$WORK/inputs.npz" \
    "fuse-qkv$GRAPH_NOTE" "${GRAPH[@]}"
  replay_numerics step-fuse-qkv-graph fuse-qkv
  run_step step-fused-graph 40 time_row step-fused-graph "$WORK/unet-conv/fused" "$WORK/inputs.npz" \
    "fused (cuda_only_fusions)$GRAPH_NOTE" "${GRAPH[@]}"
  replay_numerics step-fused-graph fused
  run_step step-fuse-qkv-nhwc 40 time_row step-fuse-qkv-nhwc "$WORK/unet-conv/fuse-qkv" "$WORK/inputs.npz" \
    "fuse-qkv, $NHWC_NOTE" "${NHWC[@]}"
  run_step step-torch 20 torch_row
  record_torch_warmup
  # 5.
  record_export
  start_bench_conversion
  run_step kernels-fuse-qkv 40 kernels fuse-qkv
  run_step kernels-fused 40 kernels fused
  if [ "$EP" = cuda ]; then rm -rf "$WORK/unet-conv"; fi  # disk for the rest
  # 6.
  run_step bench-fused-graph 90 bench_row "$BENCH_PROFILE"
  if [ "$islands" = 1 ]; then
    printf 'name = "vae-islands"\nextends = "%s"\ndescription = "%s"\n[precision.ranges]\ncomponents = ["vae_decoder"]\n' \
      "$BENCH_PROFILE" "the check's bench profile with the VAE decoder in fp16 with fp32 range islands" > "$WORK/vae-islands.toml"
    run_step bench-vae-islands 150 bench_row "$WORK/vae-islands.toml"
  else
    record bench-vae-islands skipped "VAE_ISLANDS=$islands" 0
  fi
  # 7.
  run_step tensorrt 5 tensorrt
  # 8.
  if [ "$SD15" = 1 ]; then run_step sd15 150 sd15; else record sd15 skipped "SD15=$SD15" 0; fi
}

case "$phase" in
  check) check ;;
  prep) prep ;;
  bench) bench ;;
  all) prep && bench ;;
  *) echo "gpu_sdxl.sh: unknown phase '$phase' (check, prep, bench or all)" >&2; exit 2 ;;
esac
