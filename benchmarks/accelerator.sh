#!/usr/bin/env bash
# Every method's paper config (its paper batch size and resolution), train and eval steps on
# synthetic inputs, each run in its own process (a fresh XLA client), then the markdown table.
# LHC-Net runs its stage B (the ResNet-34v2 with the LHC modules, batch 64; stages A1–A3 train the
# backbone alone).
#
#   bash benchmarks/accelerator.sh OUT_DIR      # → OUT_DIR/results.jsonl, OUT_DIR/table.md, OUT_DIR/logs/
#
# Environment: DTYPES (default "bfloat16 float32": the accelerators' default first, for a lease
# that ends early), BATCH (every config at this batch size instead of its paper one, e.g. 16 for
# the CPU no-regression figures), STEPS (default 20 timed steps),
# WARMUP (default 5 untimed steps after compilation), PROFILE=1 (a jax.profiler trace of 3 train
# steps per run under OUT_DIR/profile/), REFERENCE=0 (no official-code H100 columns), CONFIGS (a
# space-separated subset), REMAT (config.model.remat of every run, default none), PY (default python3,
# else python), RUN_TIMEOUT (seconds; a run past it is stopped, killed 10 s later if it has not
# gone, and the next one starts), OFFICIAL (clones of the
# official code as METHOD=DIR words, e.g. "dan=/tmp/DAN scan_cci=/tmp/SCAN-CCI-FER": then each
# method's official training step is timed after ours, on the same device and at the same batch, in
# each of OFFICIAL_VARIANTS, default "fp32 tuned compiled"; OFFICIAL_PACKAGES, a folder of packages
# the official code needs and the machine lacks, e.g. APViT's mmcv 1.x; see benchmarks/official_step.py;
# "lhcnet=DIR" times the official Keras step, fp32 only, with TF_PY, a python with TensorFlow and
# tf-keras, default PY; see tests/reference/official_lhcnet_keras.py).
# Lines are appended to OUT_DIR/results.jsonl.
case "${1:-}" in  # before the first argument becomes OUT_DIR: `--help` would be a folder's name
  -h|--help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p;}' "$0"; exit 0 ;;
  -*) echo "error: unknown option $1; usage: bash benchmarks/accelerator.sh OUT_DIR (--help describes it)" >&2; exit 2 ;;
esac
set -euo pipefail
OUT_DIR=$(realpath -m "${1:?usage: bash benchmarks/accelerator.sh OUT_DIR}")
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python3 || echo python)}
DTYPES=${DTYPES:-bfloat16 float32}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
read -r -a CONFIGS <<< "${CONFIGS:-configs/dan.py:rafdb configs/apvit.py:rafdb configs/scan_cci.py:rafdb configs/lhcnet.py:fer2013,stage=B}"
mkdir -p "$OUT_DIR/logs"
limit=()
if [ -n "${RUN_TIMEOUT:-}" ]; then limit=(timeout -k 10 "$RUN_TIMEOUT"); fi

for dtype in $DTYPES; do
  for config in "${CONFIGS[@]}"; do
    name="$(echo "$config" | tr ':/,=' '____').$dtype.${REMAT:-none}"
    args=(--config="$config" --input=synthetic --config.model.dtype="$dtype" --config.model.remat="${REMAT:-none}"
          --steps="$STEPS" --warmup="$WARMUP"
          --output="$OUT_DIR/results.jsonl")
    if [ -n "${BATCH:-}" ]; then args+=(--config.batch_size="$BATCH"); fi
    if [ -n "${PROFILE:-}" ]; then args+=(--profile_dir="$OUT_DIR/profile/$name"); fi
    echo "$config $dtype" >&2
    "${limit[@]}" "$PY" -m fer_jax.benchmark "${args[@]}" > /dev/null 2> "$OUT_DIR/logs/$name.log" \
      || echo "failed: $config $dtype (see $OUT_DIR/logs/$name.log)" >&2
  done
done

if [ -n "${OFFICIAL:-}" ]; then
  device=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
  batch=()
  if [ -n "${BATCH:-}" ]; then batch=(--batch="$BATCH"); fi
  packages=()
  if [ -n "${OFFICIAL_PACKAGES:-}" ]; then packages=(--packages="$OFFICIAL_PACKAGES"); fi
  for clone in $OFFICIAL; do
    method=${clone%%=*}
    if [ "$method" = lhcnet ]; then   # Keras, as released only
      step=(env TF_USE_LEGACY_KERAS=1 "${TF_PY:-$PY}" tests/reference/official_lhcnet_keras.py time_step)
      variants=fp32
    else
      step=("$PY" benchmarks/official_step.py --method="$method" --device="$device" "${packages[@]}")
      variants=${OFFICIAL_VARIANTS:-fp32 tuned compiled}
    fi
    for variant in $variants; do
      echo "official $method $variant" >&2
      "${limit[@]}" "${step[@]}" --official="${clone#*=}" --variant="$variant" "${batch[@]}" --steps="$STEPS" \
        --warmup="$WARMUP" --output="$OUT_DIR/results.jsonl" > /dev/null 2> "$OUT_DIR/logs/official_$method.$variant.log" \
        || echo "failed: official $method $variant (see $OUT_DIR/logs/official_$method.$variant.log)" >&2
    done
  done
fi

reference=()
if [ "${REFERENCE:-1}" != 0 ]; then reference=(--reference); fi
"$PY" benchmarks/render_table.py "$OUT_DIR/results.jsonl" "${reference[@]}" | tee "$OUT_DIR/table.md"
