#!/usr/bin/env bash
# Every input-pipeline figure of BENCHMARKS.md in one run, one JSON line each, appended to $OUT.
#
#   bash benchmarks/input_pipeline.sh            # DATA=/tmp/fer_jax_bench OUT=benchmarks/results.jsonl
#
# Generates stand-ins with the real sets' sizes and layouts (fer_jax.data.generate_layout),
# prepares them, then times, side by side: the official DAN DataLoader chain (PyTorch, needs
# the `parity` extra) and our host stream on the same JPEGs, with each decoded-cache mode;
# the device augmentation alone; and every method's paper config end to end against its
# step-only (synthetic) speed. BATCH_E2E and STEPS_E2E size the end-to-end runs.
case "${1:-}" in  # it takes none: an argument, --help too, was ignored and the long run began
  "") ;;
  -h|--help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p;}' "$0"; exit 0 ;;
  *) echo "error: benchmarks/input_pipeline.sh takes no arguments, not $1: set DATA, OUT, BATCH_E2E or STEPS_E2E in" \
       "its environment (--help describes them)" >&2; exit 2 ;;
esac
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/tmp/fer_jax_bench}
OUT=${OUT:-benchmarks/results.jsonl}
BATCH_E2E=${BATCH_E2E:-16}
STEPS_E2E=${STEPS_E2E:-8}
TFDS="$DATA/tfds"
mkdir -p "$DATA"

prepare() {  # generate_layout name, prepare dataset name
  if [ ! -d "$DATA/$1" ]; then
    $PY -m fer_jax.data.generate_layout --dataset="$1" --out="$DATA/$1"
  fi
  $PY -m fer_jax.data.prepare --dataset="$2" --manual_dir="$DATA/$1" --data_dir="$TFDS" > /dev/null
}
record() { echo "$1" | tee -a "$OUT"; }
bench() { record "$($PY -m fer_jax.benchmark "$@" --config.dataset.data_dir="$TFDS" 2>/dev/null | tail -1)"; }

prepare rafdb rafdb
prepare rafdb_aligned224 rafdb/aligned224
prepare fer2013 fer2013

# Host stream vs the official DAN loader, RAF-DB (12,271 training JPEGs of 100×100), batch 64.
record "$($PY benchmarks/torch_dataloader.py --root="$DATA/rafdb" --batch_size=64 --workers=2 --batches=150 --warmup=10 2>/dev/null)"
for cache in none host device; do
  bench --config=configs/dan.py:rafdb --input=host --config.batch_size=64 --config.dataset.cache=$cache --steps=150 --warmup=10
done
bench --config=configs/dan.py:rafdb --input=augment --config.batch_size=64 --steps=20

# End to end vs step only, every method's paper config.
for config in configs/dan.py:rafdb configs/apvit.py:rafdb configs/scan_cci.py:rafdb \
              configs/lhcnet.py:fer2013,stage=A1 configs/lhcnet.py:fer2013,stage=A2; do
  for mode in synthetic end_to_end; do
    bench --config=$config --input=$mode --config.batch_size="$BATCH_E2E" --steps="$STEPS_E2E" --warmup=2
  done
done
