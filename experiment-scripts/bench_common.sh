# Shared by the run_*.sh benchmark scripts (sourced, not run): locating dfast and Python, checking that an
# execution provider can run here, exporting the random-weight models, and the benchmark sequence
# (dfast bench per profile -> pytorch_reference.py -> dfast report).
#
# Environment every script reads (all optional):
#   DFAST         a built dfast binary (default: `cargo run --release --` of this checkout, built first)
#   PYTHON        Python 3.11+ with experiment-scripts/requirements-fixtures.txt installed (default python3);
#                 it also reads the model cards (common.py)
#   EXPORTS       where random-weight models are exported (default ~/.cache/dfast/exports); the ONNX export
#                 goes to EXPORTS/<arch>-random, the PyTorch weights to EXPORTS/<arch>-random-pytorch
#   EXPORTER      torchscript (default) or dynamo, for export_onnx.py
#   MODEL_DIR     the ONNX pipeline to bench (default EXPORTS/<arch>-random; exported when missing)
#   PT_MODEL      diffusers pipeline folder for the PyTorch rows (default: the same random weights)
#   OUT           result folder (each script has its default under benchmarks/)
#   FORCE=1       clear earlier dfast-*/ and pytorch/ results in OUT instead of refusing to run
#   PROFILES, PRECISION, STEPS, WIDTH, HEIGHT, BATCH, WARMUP, RUNS, PROMPT, TAG, SCHEDULER   bench settings
#   PT_SETTINGS   pytorch_reference.py --settings (empty: no PyTorch rows, said so in the output)
#   PT_DEVICE     cpu or cuda for the PyTorch rows (default: cuda for the cuda/tensorrt EPs, else cpu)
#   KEEP_CONVERTED=1  keep each dfast bench folder's converted/ pipeline (removed by default: disk)
#   PT_ARGS       extra pytorch_reference.py arguments, e.g. "--compile-mode max-autotune --inductor-tuning"
#   ORT_DYLIB_PATH, ORT_LIB_CPU, ORT_LIB_CUDA, ORT_LIB_TENSORRT, ORT_LIB_OPENVINO
#                 the ONNX Runtime library per EP; default ORT_DYLIB_PATH, else .ort/<flavour>/ of this
#                 checkout (cuda and tensorrt: .ort/cuda/, openvino: .ort/openvino/, cpu: dfast's own lookup)

DFAST_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$DFAST_ROOT/experiment-scripts"
PROG="$(basename "$0")"
PYTHON="${PYTHON:-python3}"
EXPORTS="${EXPORTS:-${XDG_CACHE_HOME:-$HOME/.cache}/dfast/exports}"
EXPORTER="${EXPORTER:-torchscript}"
# The seed's benchmark prompt.
PROMPT="${PROMPT:-ghibli style, a fantasy landscape with castles}"
FAILED=()

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "== $PROG: $*" >&2; }

# dfast itself: DFAST, else cargo run of this checkout (built once by check_dfast).
dfast() {
  if [ -n "${DFAST:-}" ]; then
    "$DFAST" "$@"
  else
    cargo run --release --quiet --manifest-path "$DFAST_ROOT/Cargo.toml" -- "$@"
  fi
}

check_dfast() {
  if [ -n "${DFAST:-}" ]; then
    [ -x "$DFAST" ] || die "DFAST=$DFAST is not an executable file"
  else
    command -v cargo >/dev/null || die "neither DFAST (a built dfast binary) nor cargo is available"
    log "building dfast (cargo build --release)"
    cargo build --release --quiet --manifest-path "$DFAST_ROOT/Cargo.toml" || die "cargo build --release failed"
  fi
  dfast bench --help >/dev/null 2>&1 || die "this dfast has no working 'bench' command (dfast bench --help failed)"
  dfast report --help >/dev/null 2>&1 || die "this dfast has no working 'report' command (dfast report --help failed)"
}

check_python() {
  command -v "$PYTHON" >/dev/null || die "no Python at PYTHON=$PYTHON"
  "$PYTHON" -c "import torch, diffusers, transformers, open_clip, onnx, onnxruntime" 2>/dev/null ||
    die "$PYTHON lacks torch/diffusers/transformers/open_clip/onnx/onnxruntime: install
  experiment-scripts/requirements-fixtures.txt into it, or set PYTHON to a Python that has them"
}

# ---------------------------------------------------------------------------------------------------------
# Execution providers

# ONNX Runtime library for an EP (empty: dfast's own lookup, fine for cpu).
ort_lib_for() {
  local ep=$1 var flavour lib
  var="ORT_LIB_$(echo "$ep" | tr '[:lower:]' '[:upper:]')"
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  if [ -n "${ORT_DYLIB_PATH:-}" ]; then echo "$ORT_DYLIB_PATH"; return; fi
  case "$ep" in
    cuda|tensorrt) flavour=cuda ;;
    openvino) flavour=openvino ;;
    *) return 0 ;;
  esac
  lib=$(ls "$DFAST_ROOT/.ort/$flavour"/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
  echo "$lib"
}

have_nvidia_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

have_lib() {  # a shared library the dynamic loader (or LD_LIBRARY_PATH) can find
  local name=$1 d
  ldconfig -p 2>/dev/null | grep -q "$name" && return 0
  local IFS=:
  for d in ${LD_LIBRARY_PATH:-}; do ls "$d"/"$name"* >/dev/null 2>&1 && return 0; done
  return 1
}

# Why EP cannot run here (prints one sentence and returns 1), or returns 0. Static checks only.
ep_problem() {
  local ep=$1 lib
  lib=$(ort_lib_for "$ep")
  case "$ep" in
    cpu) [ -z "$lib" ] || [ -f "$lib" ] || { echo "the ONNX Runtime library $lib does not exist"; return 1; } ;;
    cuda|tensorrt)
      have_nvidia_gpu || { echo "no NVIDIA GPU here (nvidia-smi lists none): the $ep EP cannot run on this machine"; return 1; }
      [ -n "$lib" ] && [ -f "$lib" ] || { echo "the $ep EP needs ONNX Runtime's GPU build (onnxruntime-gpu==1.31.1's libonnxruntime.so.1.31.1, FIELD.md section 3): set ORT_LIB_$(echo "$ep" | tr '[:lower:]' '[:upper:]') or ORT_DYLIB_PATH to it, or put it in .ort/cuda/"; return 1; }
      [ -f "$(dirname "$lib")/libonnxruntime_providers_cuda.so" ] || { echo "$lib has no libonnxruntime_providers_cuda.so beside it: not a CUDA build of ONNX Runtime"; return 1; }
      if [ "$ep" = tensorrt ]; then
        [ -f "$(dirname "$lib")/libonnxruntime_providers_tensorrt.so" ] || { echo "$lib has no libonnxruntime_providers_tensorrt.so beside it"; return 1; }
        have_lib libnvinfer.so || { echo "TensorRT (libnvinfer.so) is not on the library path: the tensorrt EP cannot run here"; return 1; }
      fi ;;
    openvino)
      [ -n "$lib" ] && [ -f "$lib" ] || { echo "the openvino EP needs an ONNX Runtime build with OpenVINO (e.g. onnxruntime-openvino's libonnxruntime.so, FIELD.md section 3): set ORT_LIB_OPENVINO or put it in .ort/openvino/"; return 1; }
      [ -f "$(dirname "$lib")/libonnxruntime_providers_openvino.so" ] || { echo "$lib has no libonnxruntime_providers_openvino.so beside it"; return 1; } ;;
    *) echo "unknown execution provider '$ep' (cpu, cuda, tensorrt, openvino)"; return 1 ;;
  esac
}

# dfast for one EP: its ONNX Runtime library in ORT_DYLIB_PATH.
dfast_ep() {
  local ep=$1 lib
  shift
  lib=$(ort_lib_for "$ep")
  if [ -n "$lib" ]; then ORT_DYLIB_PATH="$lib" dfast "$@"; else dfast "$@"; fi
}

# Static checks, then one tiny `dfast bench` (embedded models/tiny-sd, 64x64, one step) on the EP.
# Prints why it failed and returns 1 when the EP cannot run here.
probe_ep() {
  local ep=$1 why tmp rc=0
  if ! why=$(ep_problem "$ep"); then echo "$why"; return 1; fi
  tmp=$(mktemp -d)
  if ! dfast_ep "$ep" bench --model "$DFAST_ROOT/models/tiny-sd" --profile baseline --ep "$ep" --steps 1 \
      --width 64 --height 64 --warmup 0 --runs 1 --out "$tmp/probe" >"$tmp/log" 2>&1; then
    echo "a one-step dfast bench of models/tiny-sd on the $ep EP failed: $(tail -n 3 "$tmp/log" | tr '\n' ' ')"
    rc=1
  fi
  rm -rf "$tmp"
  return $rc
}

require_ep() {
  local ep=$1 why
  log "checking that the $ep EP runs here"
  why=$(probe_ep "$ep") || die "$why"
}

# ---------------------------------------------------------------------------------------------------------
# Models and results

# The random-weight ONNX export of ARCH in DIR, made with export_onnx.py when DIR is missing.
ensure_export() {
  local arch=$1 dir=$2
  if [ -f "$dir/model_index.json" ] && [ -f "$dir/unet/model.onnx" ]; then
    log "using the existing export $dir"
    return
  fi
  [ ! -e "$dir" ] || die "$dir exists but holds no complete pipeline (model_index.json, unet/model.onnx): remove it"
  log "exporting random-weight $arch to $dir ($EXPORTER exporter)"
  rm -rf "$dir.partial"
  mkdir -p "$(dirname "$dir")"
  "$PYTHON" "$SCRIPTS/export_onnx.py" --random-weights --arch "$arch" --exporter "$EXPORTER" --out "$dir.partial" ||
    die "export_onnx.py failed for $arch"
  mv "$dir.partial" "$dir"
}

# OUT must not hold results of an earlier run (FORCE=1 clears them).
prepare_out() {
  local out=$1 old
  mkdir -p "$out"
  old=$(find "$out" -mindepth 1 -maxdepth 1 \( -name 'dfast-*' -o -name pytorch \) 2>/dev/null || true)
  if [ -n "$old" ]; then
    [ "${FORCE:-0}" = 1 ] || die "$out already holds results ($(echo "$old" | xargs -n1 basename | tr '\n' ' ')); set FORCE=1 to replace them, or OUT=another folder"
    log "FORCE=1: clearing earlier results in $out"
    echo "$old" | while IFS= read -r d; do rm -rf "$d"; done
  fi
}

# Runs a step; a failure is recorded (and reported by finish), the remaining steps still run.
step() {
  local what=$1 rc=0
  shift
  log "$what"
  "$@" || rc=$?
  if [ $rc -ne 0 ]; then
    FAILED+=("$what (exit status $rc)")
    echo "$PROG: FAILED: $what (exit status $rc)" >&2
  fi
}

finish() {
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "$PROG: ${#FAILED[@]} step(s) failed:" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
  fi
  log "done"
}

# dfast bench, one (profile, precision) per call and folder: OUT/dfast-<ep>-<profile>-<precision>/.
# Arguments: EP MODEL_DIR OUT PRECISION PROFILE... ; reads STEPS WIDTH HEIGHT BATCH WARMUP RUNS SCHEDULER TAG.
bench_profiles() {
  local ep=$1 model=$2 out=$3 precision=$4 profile dir
  shift 4
  for profile in "$@"; do
    dir="$out/dfast-$ep-$profile-$precision"
    step "dfast bench: $profile, $precision, $ep EP" \
      dfast_ep "$ep" bench --model "$model" --profile "$profile" --precision "$precision" --ep "$ep" \
        --scheduler "$SCHEDULER" --steps "$STEPS" --batch-size "$BATCH" --width "$WIDTH" --height "$HEIGHT" \
        --warmup "$WARMUP" --runs "$RUNS" --prompt "$PROMPT" --tag "$TAG" --out "$dir"
    # bench leaves the converted pipeline under converted/: gigabytes per row for SDXL.
    [ "${KEEP_CONVERTED:-0}" = 1 ] || rm -rf "$dir/converted"
  done
}

# pytorch_reference.py into OUT/pytorch/. Arguments: ARCH MODEL_NAME OUT DEVICE.
bench_pytorch() {
  local arch=$1 name=$2 out=$3 device=$4
  local -a src
  if [ -z "${PT_SETTINGS:-}" ]; then
    log "PT_SETTINGS is empty: no PyTorch reference rows"
    return
  fi
  if [ -n "${PT_MODEL:-}" ]; then
    src=(--model "$PT_MODEL")
  else
    src=(--random-weights --arch "$arch" --weights-dir "$EXPORTS/$arch-random-pytorch")
  fi
  # shellcheck disable=SC2086  # PT_ARGS is a list of words
  step "PyTorch reference ($PT_SETTINGS) on torch-$device" \
    "$PYTHON" "$SCRIPTS/pytorch_reference.py" "${src[@]}" --model-name "$name" \
      --device "$device" --settings "$PT_SETTINGS" --scheduler "$SCHEDULER" --steps "$STEPS" \
      --batch-size "$BATCH" --width "$WIDTH" --height "$HEIGHT" --warmup "$WARMUP" --runs "$RUNS" \
      --prompt "$PROMPT" --tag "$TAG" ${PT_ARGS:-} --out "$out/pytorch"
}

# dfast report over every result folder of OUT. Arguments: OUT TITLE.
report() {
  local out=$1 title=$2 dirs=()
  while IFS= read -r d; do dirs+=("$d"); done < <(find "$out" -mindepth 1 -maxdepth 1 -type d \
    \( -name 'dfast-*' -o -name pytorch \) -exec sh -c 'ls "$1"/*.csv >/dev/null 2>&1' _ {} \; -print | sort)
  if [ ${#dirs[@]} -eq 0 ]; then
    FAILED+=("dfast report (no results to report)")
    return
  fi
  step "dfast report -> $out/report.md, report.png" dfast report "${dirs[@]}" --title "$title" --out "$out"
}

# The model card's defaults (models/<card>.toml, read by common.py: scheduler, width, height, steps); a
# variable already set (environment or the calling script) wins.
card_defaults() {
  local defs
  defs=$("$PYTHON" "$SCRIPTS/common.py" defaults --prefix CARD_ "$1") ||
    die "cannot read the model card '$1' with $PYTHON (common.py, models/$1.toml)"
  eval "$defs"
  SCHEDULER=${SCHEDULER:-$CARD_SCHEDULER}; WIDTH=${WIDTH:-$CARD_WIDTH}; HEIGHT=${HEIGHT:-$CARD_HEIGHT}
  STEPS=${STEPS:-$CARD_STEPS}; BATCH=${BATCH:-1}; WARMUP=${WARMUP:-3}; RUNS=${RUNS:-3}
  [ -n "$SCHEDULER" ] && [ -n "$WIDTH" ] && [ -n "$HEIGHT" ] && [ -n "$STEPS" ] ||
    die "models/$1.toml sets no scheduler, width, height or steps: set SCHEDULER, WIDTH, HEIGHT, STEPS"
}

# Precision ONNX Runtime runs an EP in by default (as dfast's --precision default).
default_precision() {
  case "$1" in cuda|tensorrt) echo fp16 ;; *) echo fp32 ;; esac
}

# The whole sequence for run_sd.sh / run_sdxl.sh / run_ssd1b.sh: arguments ARCH EP.
# The seed's steps: an fp32 baseline, then each profile in the EP's precision (fp16 on GPUs).
run_model_benchmark() {
  local arch=$1 ep=$2 precision profiles name
  card_defaults "$arch"
  precision=${PRECISION:-$(default_precision "$ep")}
  PROFILES=${PROFILES:-baseline,sdpa,fuse-qkv,conv1x1,int8-dynamic}
  PT_SETTINGS=${PT_SETTINGS-fp32,bf16,bf16+sdpa,bf16+sdpa+compile,bf16+sdpa+compile+fused-qkv}
  case "$ep" in cuda|tensorrt) PT_DEVICE=${PT_DEVICE:-cuda} ;; *) PT_DEVICE=${PT_DEVICE:-cpu} ;; esac
  MODEL_DIR=${MODEL_DIR:-$EXPORTS/$arch-random}
  OUT=${OUT:-$DFAST_ROOT/benchmarks/$arch-$ep}
  TAG=${TAG:-$arch-$ep}
  name=$(basename "$MODEL_DIR")
  IFS=, read -r -a profiles <<<"$PROFILES"

  # Everything that can fail fast, before the long export.
  check_python
  check_dfast
  require_ep "$ep"
  if [ -n "${PT_SETTINGS:-}" ] && [ "$PT_DEVICE" = cuda ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
      die "PyTorch sees no CUDA device: the torch-cuda reference rows cannot run here (PT_DEVICE=cpu to run them on the CPU)"
  fi
  prepare_out "$OUT"
  ensure_export "$arch" "$MODEL_DIR"

  log "$arch on the $ep EP: ${STEPS} steps, ${WIDTH}x${HEIGHT}, batch $BATCH, $WARMUP warm-up + $RUNS timed runs -> $OUT"
  if [ "$precision" != fp32 ]; then
    bench_profiles "$ep" "$MODEL_DIR" "$OUT" fp32 baseline
  fi
  bench_profiles "$ep" "$MODEL_DIR" "$OUT" "$precision" "${profiles[@]}"
  bench_pytorch "$arch" "$name" "$OUT" "$PT_DEVICE"
  report "$OUT" "$arch (random weights), ${WIDTH}x${HEIGHT}, $STEPS steps, batch $BATCH: dfast ($ep EP) vs PyTorch"
  finish
}
