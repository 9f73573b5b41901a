#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (every host runs the same command; JAX finds its peers).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b DATA_DIR=gs://bucket/tensorflow_datasets \
#   WORKDIR=gs://bucket/runs/apvit_rafdb CONFIG=configs/apvit.py:rafdb bash launch/tpu_pod.sh
#
# Data sets must be prepared once (python -m fer_jax.data.prepare) into DATA_DIR, which every
# host can read. Extra arguments are passed to fer_jax.main (e.g. --config.batch_size=1024).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
REPO_URL="${REPO_URL:-$(git config --get remote.origin.url)}"
EXTRA_ARGS="$*"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d fer_jax ] || git clone '$REPO_URL' fer_jax
  cd fer_jax && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e . 'jax[tpu]'
  python -m fer_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR \
    ${DATA_DIR:+--config.dataset.data_dir=$DATA_DIR} $EXTRA_ARGS
"
