#!/usr/bin/env bash
# DAN's :synthetic config trained by two processes × 2 CPU devices on this machine, their collectives
# through gloo over localhost (as tests/test_multiprocess.py runs them): where a collective round
# costs real time, unlike between the fake devices of one process. Prints the img/s that process 0
# logs every 2 steps (the first interval holds the compilation).
#
#   bash benchmarks/two_processes.sh DATA_DIR OUT_DIR     # synthetic/tiny is generated into DATA_DIR
#                                                         # on first use (by process 0)
set -euo pipefail
DATA_DIR=$(realpath -m "${1:?usage: bash benchmarks/two_processes.sh DATA_DIR OUT_DIR}")
OUT_DIR=$(realpath -m "${2:?usage: bash benchmarks/two_processes.sh DATA_DIR OUT_DIR}")
cd "$(dirname "$0")/.."
# $PYTHON if set, else the checkout's virtual environment, else python3 on the PATH.
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ ! -x .venv/bin/python ]] || PYTHON=.venv/bin/python
fi
rm -rf "$OUT_DIR/work"
mkdir -p "$OUT_DIR"
port=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('localhost', 0)); print(s.getsockname()[1])")
pids=()
for process in 0 1; do
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "$PYTHON" -m fer_jax.main \
    --config=configs/dan.py:synthetic --workdir="$OUT_DIR/work" --config.dataset.name=synthetic/tiny \
    --config.dataset.data_dir="$DATA_DIR" --config.input.size=32 --config.batch_size=32 --config.num_epochs=2 \
    --config.log_every_steps=2 --config.data_workers=0 --config.checkpoint_every_steps=1000 --distributed \
    --coordinator_address="localhost:$port" --num_processes=2 --process_id=$process \
    > /dev/null 2> "$OUT_DIR/log_$process" &
  pids+=("$!")
done
failed=0
for process in 0 1; do
  status=0
  wait "${pids[$process]}" || status=$?
  if ((status)); then
    ((failed)) || failed=$status
    echo "process $process exited with status $status; the end of $OUT_DIR/log_$process:" >&2
    tail -n 20 "$OUT_DIR/log_$process" >&2
  fi
done
((failed == 0)) || exit "$failed"
grep -o "[0-9.]* img/s" "$OUT_DIR/log_0" | tr '\n' ' '
echo
