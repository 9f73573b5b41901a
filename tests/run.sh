#!/usr/bin/env bash
# The whole test suite from a fresh clone: virtual environment, install, run.
#   [PYTHON=python3.12] bash tests/run.sh [pytest arguments]
# Both tiers, in two pytest-xdist workers (XLA compiles on one thread: two keep two cores busy)
# that steal queued tests from each other, so neither idles while the other runs the long ones;
# the fast one alone: .venv/bin/python -m pytest -m "not integration" (README).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "Installing fer_jax and its test dependencies (PyTorch, timm and ONNX Runtime for the reference and export tests) into .venv:" \
     "a first run downloads a few GB." >&2
"${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
echo "Running both tiers of tests in two workers (25–30 minutes on two cores)." >&2
exec .venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=25 "$@"
