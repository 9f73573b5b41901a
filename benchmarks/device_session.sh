#!/usr/bin/env bash
# A lent accelerator's few minutes (15 a task, its start included: one call of BUDGET=570 is the plan):
# issue 18's open measurements in order of what they are worth, bounded by the time the call has. An
# item starts only if its estimate fits in what is left; what each item wrote, and that it is done,
# stays in STATE (in the checkout, which a warm machine keeps), so the same command issued again goes
# on where the last call stopped. BENCHMARKS.md ("One H200, measured") says why each item is here.
#
#   BUDGET=570 bash benchmarks/device_session.sh OUT_DIR
#
#   scan_cci_256          SCAN-CCI bf16 at batch 256, the batch of its goal, profiled: one run decides a goal
#   lhcnet_profile        LHC-Net stage B, bf16, profiled: its goal is an MFU, and it has no profile yet
#   dan_stem_and_pool     DAN's three most promising stem and max pool candidates against the library
#                         (run_candidates.py): the stem is 4.55 of the 9.02 ms DAN's H200 step spends over
#                         its roofline
#   dan_batch_norm        DAN with BatchNorm's statistics in one shifted pass
#   dan_stem_and_pool_rest  DAN's other four stem and max pool candidates
#   apvit_attention       APViT with cuDNN's flash attention against the library
#   dan_combined          the stem candidates with the pool gradient candidates, together
#   apvit_official        APViT's official step as released and tuned (bf16 autocast), on the same GPU:
#                         with APVIT_CLONE (github.com/youqingxiaozhua/APViT) and OFFICIAL_PACKAGES (mmcv
#                         1.x, pure Python: benchmarks/official_step.py says how), else it fails at once
#   dan_stem_and_pool_2   every stem and pool candidate again, in reverse order (a second round: the first's
#                         lines are kept, and its variants not timed yet are timed first): only when named
#
# Each item is stopped at 1.5 times its estimate (a hang costs no more), and a candidates item run again
# times only the variants it has no line of (run_candidates.py --resume). Compiled programs are kept in
# STATE/jax_cache (JAX's persistent cache), so a rerun on a warm machine compiles nothing twice.
#
# Environment: BUDGET (seconds this call may take, default 570), ITEMS (a space-separated subset, in
# this order; empty: none, the environment only), STATE (default .device_session), WHEELS (a folder from
# `python launch/offline_wheels.py`: the dependencies the machine lacks are installed from it without an
# index), PY (default python3, else python: a fresh machine may have no `python`), TARGET (the GpuTargetConfigProto whose bandwidth the
# profiles' rooflines take; default the one in benchmarks/gpu_targets whose device_description_str is the
# GPU's device kind: h100.txtpb for "NVIDIA H100 80GB HBM3", h200.txtpb for "NVIDIA H200"; none, and no
# rooflines, for another GPU); DAN, LHCNET, SCAN_CCI, APVIT (the configs, default each paper config) and
# BATCH, STEPS, WARMUP (every run's, instead of the paper batch, 20 and 5) give a small run of the same
# items on a CPU. Every call writes into OUT_DIR everything done so far, after the environment is known,
# after each item and at exit (a call killed at its time limit has delivered its finished items), in at
# most 8 files, the most the device tool brings back: candidates.jsonl, results.jsonl and official.jsonl
# (the timed lines), breakdowns.txt (each profiled item's breakdown by category, then, on a GPU with a
# TARGET, beside its roofline), env.txt (the machine), session.log (what the calls printed: each item
# started, done, failed or skipped), logs.tgz (done.txt, the items' logs and files) and profiles.tgz (their
# traces).
case "${1:-}" in  # before the first argument becomes OUT_DIR: `--help` would be a folder's name
  -h|--help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p;}' "$0"; exit 0 ;;
  -*) echo "error: unknown option $1; usage: BUDGET=570 bash benchmarks/device_session.sh OUT_DIR (--help describes it)" >&2; exit 2 ;;
esac
set -euo pipefail
OUT_DIR=$(realpath -m "${1:?usage: bash benchmarks/device_session.sh OUT_DIR}")
cd "$(dirname "$0")/.."
DEADLINE=$(( $(date +%s) + ${BUDGET:-570} ))
PY=${PY:-$(command -v python3 || echo python)}
STATE=$(realpath -m "${STATE:-.device_session}")
DAN=${DAN:-configs/dan.py:rafdb}
LHCNET=${LHCNET:-configs/lhcnet.py:fer2013,stage=B}
SCAN_CCI=${SCAN_CCI:-configs/scan_cci.py:rafdb}
APVIT=${APVIT:-configs/apvit.py:rafdb}
ITEMS=${ITEMS-scan_cci_256 lhcnet_profile dan_stem_and_pool dan_batch_norm dan_stem_and_pool_rest apvit_attention \
dan_combined apvit_official}
# Most promising first (compiled for the H200, BENCHMARKS.md): should the item be cut short, they are in.
STEM_AND_POOL=max_pool_winner_from_forward,conv_input_channels_padded,conv_stem_patches_product
STEM_AND_POOL_REST=conv_stem_space_to_depth,max_pool_gradient_input_phases,max_pool_xla_gradient,\
max_pool_tap_gradient_stored
# Seconds each item takes on an H200 (a process per run, compilation and 25 steps: DAN ~40, APViT ~95,
# SCAN-CCI and LHC-Net ~55, as on 2026-12-04), with a margin.
declare -A ESTIMATE=([scan_cci_256]=80 [lhcnet_profile]=80 [dan_stem_and_pool]=190 [dan_batch_norm]=50
                     [dan_stem_and_pool_rest]=190 [apvit_attention]=220 [dan_combined]=190 [dan_stem_and_pool_2]=370
                     [apvit_official]=150)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # fer_jax from this checkout, installed or not
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$STATE/jax_cache}
mkdir -p "$OUT_DIR" "$STATE/logs" "$STATE/items"
touch "$STATE/done.txt"
exec > >(tee -a "$STATE/session.log") 2>&1

size=()
if [ -n "${BATCH:-}" ]; then size+=(--batch_size="$BATCH"); fi
size+=(--steps="${STEPS:-20}" --warmup="${WARMUP:-5}")

bounded() {  # COMMAND ...: stopped at the item's deadline (TERM to its process group, KILL 10 s later)
  local left=$(( ${ITEM_DEADLINE:-$DEADLINE} - $(date +%s) ))
  if (( left <= 0 )); then return 124; fi  # timeout 0 would not stop it
  timeout -k 10 "$left" "$@"
}

candidates() {  # CONFIG VARIANTS [ROUNDS]: a round timed before (its lines in candidates.jsonl) is not run again
  bounded "$PY" benchmarks/run_candidates.py "$1" --variants="$2" --rounds="${3:-1}" "${size[@]}" \
    --output="$STATE/candidates.jsonl" --resume
}

profiled() {  # ITEM CONFIG PAPER_BATCH: bf16, one run profiled, then its breakdown
  local name=$1 config=$2 trace
  PY=$PY CONFIGS=$config BATCH=${BATCH:-$3} DTYPES=bfloat16 PROFILE=1 REFERENCE=0 \
    bounded bash benchmarks/accelerator.sh "$STATE/items/$name" || return 1
  grep -q . "$STATE/items/$name/results.jsonl" || return 1
  cat "$STATE/items/$name/results.jsonl" >> "$STATE/results.jsonl"
  trace=$(find "$STATE/items/$name/profile" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  bounded "$PY" benchmarks/profile_breakdown.py "$trace" --top 25 > "$STATE/breakdown_$name.txt" || return 1
  if [ "$BACKEND" = gpu ] && [ -n "$TARGET" ]; then
    bounded "$PY" benchmarks/profile_breakdown.py "$trace" --roofline "$TARGET" --top 40 >> "$STATE/breakdown_$name.txt"
  fi
}

official_apvit() {  # as released, then tuned, at fer_jax's APViT batch
  local variant
  if [ -z "${APVIT_CLONE:-}" ] || [ -z "${OFFICIAL_PACKAGES:-}" ]; then
    echo "apvit_official needs APVIT_CLONE and OFFICIAL_PACKAGES"; return 1
  fi
  for variant in fp32 tuned; do
    bounded "$PY" benchmarks/official_step.py --method=apvit --official="$APVIT_CLONE" \
      --packages="$OFFICIAL_PACKAGES" --device="$DEVICE" --variant="$variant" \
      ${BATCH:+--batch="$BATCH"} --steps="${STEPS:-20}" --warmup="${WARMUP:-5}" \
      --output="$STATE/official.jsonl" || return 1
  done
}

run_item() {
  case $1 in
    dan_stem_and_pool) candidates "$DAN" "none,$STEM_AND_POOL" ;;
    lhcnet_profile) profiled lhcnet_profile "$LHCNET" 64 ;;
    scan_cci_256) profiled scan_cci_256 "$SCAN_CCI" 256 ;;
    dan_batch_norm) candidates "$DAN" batch_norm_shifted_one_pass ;;
    dan_stem_and_pool_rest) candidates "$DAN" "none,$STEM_AND_POOL_REST" ;;
    apvit_attention) candidates "$APVIT" none,attention_cudnn_flash ;;
    dan_combined) candidates "$DAN" "conv_input_channels_padded+max_pool_winner_from_forward,\
conv_stem_patches_product+max_pool_winner_from_forward,conv_stem_space_to_depth+max_pool_winner_from_forward,\
conv_input_channels_padded+max_pool_xla_gradient" ;;
    dan_stem_and_pool_2) candidates "$DAN" "$(echo "$STEM_AND_POOL,$STEM_AND_POOL_REST" | tr ',' '\n' | tac | paste -sd,),none" 2 ;;
    apvit_official) official_apvit ;;
    *) echo "unknown item $1"; return 2 ;;
  esac
}

MAX_FILE_BYTES=$(( 16 * 2**20 ))  # the most the device tool brings back of one file

deliver() {  # everything done so far into OUT_DIR, in at most 8 files (the header says which)
  local staging="$STATE/delivery" file
  rm -rf "$staging"
  mkdir -p "$staging"
  for file in candidates.jsonl results.jsonl official.jsonl env.txt session.log; do
    if [ -f "$STATE/$file" ]; then cp "$STATE/$file" "$staging"/; fi
  done
  for file in "$STATE"/breakdown_*.txt; do
    if [ -f "$file" ]; then
      file=$(basename "$file" .txt)
      { echo "==> ${file#breakdown_} <=="; cat "$STATE/$file.txt"; echo; } >> "$staging/breakdowns.txt"
    fi
  done
  tar -czf "$staging/logs.tgz" -C "$STATE" --exclude=profile done.txt logs items
  (cd "$STATE" && find items -mindepth 2 -maxdepth 2 -name profile -print0 | tar -czf "$staging/profiles.tgz" \
    --exclude='*.xplane.pb' --null -T -)  # the perfetto traces that profile_breakdown.py reads
  for file in "$staging"/*; do
    if (( $(stat -c %s "$file") > MAX_FILE_BYTES )); then
      echo "warning: $(basename "$file") is over 16 MiB: the device tool will not bring it back" >&2
    fi
  done
  cp "$staging"/* "$OUT_DIR"/
}
trap deliver EXIT
trap 'exit 143' TERM  # a call stopped at its limit: deliver (the EXIT trap) before going

if [ ! -f "$STATE/env.txt" ]; then  # first, so that even a failed install tells what the machine has
  { date -u; nvidia-smi 2>/dev/null || true
    "$PY" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null || true; } > "$STATE/env.txt"
  deliver
fi
pip_install() { "$PY" -m pip install -q --disable-pip-version-check --no-compile --no-index --find-links="$WHEELS" "$@"; }
if [ -n "${WHEELS:-}" ] && ! pip_install -r "$WHEELS/requirements.txt"; then
  # A package of the machine older than a wheel's pin (protobuf, tensorstore) stops pip's resolver: the wheels of
  # the packages the machine lacks, as they are, and the import below decides.
  echo "pip could not install the wheels beside this machine's packages: the missing ones alone, without their pins"
  mapfile -t missing < <("$PY" benchmarks/missing_wheels.py "$WHEELS")
  if (( ${#missing[@]} )); then pip_install --no-deps "${missing[@]}" || true; fi
fi
"$PY" -c "import fer_jax.benchmark" || { echo "fer_jax's dependencies are missing here: give WHEELS"; exit 1; }
if ! grep -q '"device_kind"' "$STATE/env.txt"; then
  "$PY" -c "import json; from fer_jax import benchmark; print(json.dumps(benchmark.environment()))" >> "$STATE/env.txt"
fi
found=$("$PY" -c "import jax; print(jax.default_backend(), jax.devices()[0].device_kind)")
BACKEND=${found%% *}
KIND=${found#* }
DEVICE=$([ "$BACKEND" = gpu ] && echo cuda || echo cpu)  # torch's name for it
if [ "$BACKEND" = gpu ] && [ -z "${TARGET:-}" ]; then  # the target that describes this GPU, if there is one
  TARGET=$(grep -lxF "device_description_str: \"$KIND\"" benchmarks/gpu_targets/*.txtpb | head -n 1 || true)
  if [ -z "$TARGET" ]; then
    echo "no benchmarks/gpu_targets/*.txtpb describes a \"$KIND\": breakdowns without rooflines (set TARGET)"
  fi
fi
TARGET=${TARGET:-}
echo "$(date -u +%T) $BACKEND: $KIND${TARGET:+, rooflines against $TARGET}"
deliver

for item in $ITEMS; do
  if grep -qx "$item" "$STATE/done.txt"; then continue; fi
  left=$(( DEADLINE - $(date +%s) ))
  if (( left < ${ESTIMATE[$item]:-60} )); then
    echo "skipped: $item (${ESTIMATE[$item]:-60} s estimated, $left s left)"
    continue
  fi
  echo "$(date -u +%T) $item"
  ITEM_DEADLINE=$(( $(date +%s) + ${ESTIMATE[$item]:-60} * 3 / 2 ))
  ITEM_DEADLINE=$(( ITEM_DEADLINE < DEADLINE ? ITEM_DEADLINE : DEADLINE ))
  if run_item "$item" > "$STATE/logs/$item.log" 2>&1; then
    echo "$item" >> "$STATE/done.txt"
    echo "$(date -u +%T) done: $item"
  else
    echo "$(date -u +%T) failed: $item (logs/$item.log)"
  fi
  deliver  # now: the call may be killed at its limit during the next item
done
