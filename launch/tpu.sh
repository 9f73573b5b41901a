#!/usr/bin/env bash
# Training on a Cloud TPU VM or pod slice: create, set up every worker, run, resume after
# preemption, delete.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/tpu.sh COMMAND --name=NAME --zone=ZONE [options] [-- --config.KEY=VALUE ...]

Commands
  create       create the TPU VM / slice (on demand, --spot, or --queued as a queued resource)
  setup        copy this checkout's HEAD (git archive) to every worker, install it with jax[tpu]
               in /tmp/fer_jax/venv, mount the gs:// buckets (gcsfuse) and copy the data
  run          train on every worker (--distributed), log lines prefixed by worker host name
  stop         SIGTERM the training on every worker and wait until it has saved its step and
               exited (status 75), SIGKILL after --stop-timeout; a resume-loop (or all) running
               meanwhile ends after --retry-wait instead of running again
  resume-loop  run; after a preemption (exit 75, ssh lost, or the TPU no longer READY) run
               again, up to --max-retries: on a READY TPU once the last training has exited
               (stopped as by stop), else after re-creating and setting up the TPU
  delete       delete the TPU (with --queued: the queued resource and its TPU)
  all          create, setup, resume-loop, then delete (even after a failure or Ctrl-C) unless --keep;
               a TPU whose create failed (one of that name was there) is left alone

Options
  --name=NAME --zone=ZONE --project=PROJECT (default: gcloud's)
  --accelerator-type=TYPE   default v5litepod-16
  --runtime-version=V       for create, resume-loop and all; default by type: v4 tpu-ubuntu2204-base,
                            v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot                    Spot capacity (can be preempted at any time)
  --queued                  create through a queued resource (waits until ACTIVE)
  --config=CONFIG           configs/<method>.py:<dataset> (run, resume-loop, all)
  --workdir=DIR             gs://BUCKET/PATH (mounted with gcsfuse under /tmp/fer_jax/gcs on every
                            worker, so all see one folder and a re-created TPU resumes from it) or a
                            folder every worker already shares (NFS)
  --data-dir=DIR            prepared TFDS folder: gs://BUCKET/PATH or a path on the workers
  --data=copy|mount         gs:// data: copy to each worker's disk (default) or read via gcsfuse
  --python-version=V        Python of the workers' venv, installed by uv (default 3.12)
  --jax-version=V           pin jax[tpu]==V (default: pip's choice within setup.cfg's range)
  --max-retries=N           resume-loop: runs after the first (default 5)
  --retry-wait=SECONDS      resume-loop: pause before each retry (default 60)
  --env=KEY=VALUE           set in the training's environment on every worker (repeatable), e.g.
                            --env=TPU_STDERR_LOG_LEVEL=0
  --stop-timeout=SECONDS    stop, resume-loop: how long the training may take to save and exit
                            after SIGTERM before SIGKILL (default 600)
  --keep                    all: do not delete the TPU at the end
  --dry-run                 print the commands, run nothing
  --help                    this text
Arguments after -- go to fer_jax.main, e.g. -- --config.batch_size=1024
EOF
}

REMOTE_BASE=/tmp/fer_jax
REMOTE_PYTHON=$REMOTE_BASE/venv/bin/python
PID_FILE=$REMOTE_BASE/train.pid
STOP_MARKER=$REMOTE_BASE/stop_requested
COMMAND="" NAME="" ZONE="" PROJECT="" ACCELERATOR_TYPE=v5litepod-16 RUNTIME_VERSION="" SPOT=0 QUEUED=0
CONFIG="" WORKDIR="" DATA_DIR="" DATA_MODE=copy PYTHON_VERSION=3.12 JAX_VERSION="" MAX_RETRIES=5
RETRY_WAIT=60 STOP_TIMEOUT=600 KEEP=0 CREATED=0

# One of this script's own options (parse_options reads the shared ones).
tpu_option() {
  case $1 in
    --name=*) NAME=$(option_value "$1") ;;
    --zone=*) ZONE=$(option_value "$1") ;;
    --project=*) PROJECT=$(option_value "$1") ;;
    --accelerator-type=*) ACCELERATOR_TYPE=$(option_value "$1") ;;
    --runtime-version=*) RUNTIME_VERSION=$(option_value "$1") ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --config=*) CONFIG=$(option_value "$1") ;;
    --workdir=*) WORKDIR=$(option_value "$1") ;;
    --data-dir=*) DATA_DIR=$(option_value "$1") ;;
    --data=*) DATA_MODE=$(option_value "$1") ;;
    --python-version=*) PYTHON_VERSION=$(option_value "$1") ;;
    --jax-version=*) JAX_VERSION=$(option_value "$1") ;;
    --max-retries=*) MAX_RETRIES=$(option_value "$1") ;;
    --retry-wait=*) RETRY_WAIT=$(option_value "$1") ;;
    --stop-timeout=*) STOP_TIMEOUT=$(option_value "$1") ;;
    --keep) KEEP=1 ;;
    --env=*) env_option "$1" ;;
    *) return 1 ;;
  esac
}

parse_args() {
  case ${1:-} in
    create | setup | run | stop | resume-loop | delete | all) COMMAND=$1; shift ;;
    --help | -h) usage; exit 0 ;;
    *) die "the first argument must be a command: create, setup, run, stop, resume-loop, delete or all (see --help)" ;;
  esac
  parse_options tpu_option "$@"
  require NAME ZONE
  [[ $COMMAND == @(run|resume-loop|all) ]] && require CONFIG WORKDIR
  [[ $DATA_MODE == @(copy|mount) ]] || die "--data=$DATA_MODE: use copy or mount"
  [[ $MAX_RETRIES =~ ^[0-9]+$ ]] || die "--max-retries=$MAX_RETRIES must be a whole number"
  [[ $RETRY_WAIT =~ ^[0-9]+$ ]] || die "--retry-wait=$RETRY_WAIT must be a whole number of seconds"
  [[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || die "--stop-timeout=$STOP_TIMEOUT must be a whole number of seconds"
  check_url --workdir "$WORKDIR"
  check_url --data-dir "$DATA_DIR"
  if [[ $COMMAND == @(resume-loop|all) && -n $WORKDIR && $WORKDIR != gs://* ]]; then
    note "--workdir=$WORKDIR is no gs:// bucket: it must be a network file system every worker mounts, or a" \
      "re-created TPU starts again from scratch and the run is deleted with the TPU"
  fi
  # Only the commands that may create the TPU need its image.
  if [[ $COMMAND == @(create|resume-loop|all) && -z $RUNTIME_VERSION ]]; then
    RUNTIME_VERSION=$(default_runtime_version "$ACCELERATOR_TYPE")
  fi
}

# Dies on a mistyped URL: `gs:/b/run` would be a local folder on each worker, not the shared bucket;
# and on a relative path, which the workers would read inside $REMOTE_BASE/src, the folder `setup` replaces.
check_url() {
  [[ ! $2 =~ ^[A-Za-z][A-Za-z0-9+.-]*:/([^/]|$) ]] || die "$1=$2: write ${2%%:*}://${2#*:/} (two slashes)"
  [[ $2 != gs://?(/*) ]] || die "$1=$2 names no bucket: write gs://BUCKET/PATH"
  [[ -z $2 || $2 == gs://* || $2 == /* ]] ||
    die "$1=$2 is relative: the workers run in $REMOTE_BASE/src, which setup replaces; write gs://BUCKET/PATH or an absolute path the workers share"
}

default_runtime_version() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for --accelerator-type=$1: pass --runtime-version" ;;
  esac
}

# gcloud with this TPU's zone and project.
tpu_gcloud() {
  local scope=("--zone=$ZONE")
  [[ -z $PROJECT ]] || scope+=("--project=$PROJECT")
  run gcloud "$@" "${scope[@]}"
}

tpu_query() {
  local dry_answer=$1 scope=("--zone=$ZONE")
  shift
  [[ -z $PROJECT ]] || scope+=("--project=$PROJECT")
  query "$dry_answer" gcloud "$@" "${scope[@]}"
}

on_all_workers() {
  tpu_gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "--command=$1"
}

# READY, PREEMPTED, … or MISSING when the TPU cannot be described.
tpu_state() {
  tpu_query READY compute tpus tpu-vm describe "$NAME" '--format=value(state)' 2>/dev/null || echo MISSING
}

capacity_flags() {
  if ((SPOT)); then echo --spot; fi
}

# A create under way, cut short or failed, may leave a TPU (or queued resource) this run then owns; one gcloud finds
# already there (ALREADY_EXISTS) is another's, left alone (CREATED=0).
create_tpu() {
  local errors status=0 create=(tpu-vm create "$NAME" "--version=$RUNTIME_VERSION")
  ((!QUEUED)) || create=(queued-resources create "$NAME" "--node-id=$NAME" "--runtime-version=$RUNTIME_VERSION")
  errors=$(mktemp)
  CREATED=1
  # shellcheck disable=SC2046  # capacity_flags prints zero or one word
  tpu_gcloud compute tpus "${create[@]}" "--accelerator-type=$ACCELERATOR_TYPE" $(capacity_flags) \
    2> >(trap "" INT; tee "$errors" >&2) || status=$?
  wait "$!" 2>/dev/null || true  # tee done: its file complete
  ! grep -q ALREADY_EXISTS "$errors" || CREATED=0
  rm -f "$errors"
  ((status == 0)) || return "$status"
  ((!QUEUED)) || wait_until_active
}

# Returns 1 (the caller decides: `all` deletes, the resume loop spends a retry) on a FAILED or SUSPENDED queued
# resource, or one that cannot be described 10 times running (5 minutes).
wait_until_active() {
  local state unknown=0
  while :; do
    state=$(tpu_query ACTIVE compute tpus queued-resources describe "$NAME" '--format=value(state.state)') || state=""
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED)
        note "queued resource $NAME is $state: see gcloud compute tpus queued-resources describe $NAME --zone=$ZONE"
        return 1 ;;
      "") ((++unknown < 10)) || { note "queued resource $NAME could not be described 10 times running"; return 1; } ;;
      *) unknown=0 ;;
    esac
    note "queued resource $NAME is ${state:-unknown}; waiting"
    sleep 30
  done
}

delete_tpu() {
  if ((QUEUED)); then
    tpu_gcloud compute tpus queued-resources delete "$NAME" --force --quiet
  else
    tpu_gcloud compute tpus tpu-vm delete "$NAME" --quiet
  fi
}

bucket_of() {
  local path=${1#gs://}
  printf '%s' "${path%%/*}"
}

# Where a gs:// path appears on the workers (under its bucket's gcsfuse mount); other paths as-is.
worker_path() {
  if [[ $1 == gs://* ]]; then
    printf '%s/gcs/%s' "$REMOTE_BASE" "${1#gs://}"
  else
    printf '%s' "$1"
  fi
}

worker_data_dir() {
  if [[ $DATA_DIR == gs://* && $DATA_MODE == copy ]]; then
    printf '%s/tensorflow_datasets' "$REMOTE_BASE"
  else
    worker_path "$DATA_DIR"
  fi
}

buckets_to_mount() {
  [[ $WORKDIR != gs://* ]] || bucket_of "$WORKDIR"
  echo
  [[ $DATA_DIR != gs://* || $DATA_MODE != mount ]] || bucket_of "$DATA_DIR"
  echo
}

source_archive() {
  printf '%s/fer_jax_src_%s.tar.gz' "${TMPDIR:-/tmp}" "$NAME"
}

# The worker-side set-up, one shell line: source, venv, jax[tpu], mounts, data copy.
setup_script() {
  local jax="jax[tpu]" steps=() bucket mount
  [[ -z $JAX_VERSION ]] || jax+="==$JAX_VERSION"
  steps+=("rm -rf $REMOTE_BASE/src" "mkdir -p $REMOTE_BASE/src"
    "tar -xzf \$HOME/fer_jax_src.tar.gz -C $REMOTE_BASE/src"
    "python3 -m pip install --user --quiet uv"
    "\$HOME/.local/bin/uv venv --allow-existing --python=$PYTHON_VERSION $REMOTE_BASE/venv"
    "\$HOME/.local/bin/uv pip install --python=$REMOTE_PYTHON -e $REMOTE_BASE/src $(quote_word "$jax")")
  local buckets
  buckets=$(buckets_to_mount | sort -u)
  if [[ -n $buckets ]]; then
    steps+=("{ command -v gcsfuse >/dev/null || { curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }; }")
    for bucket in $buckets; do
      mount=$REMOTE_BASE/gcs/$bucket
      # Orbax renames each finished step's folder, which gcsfuse allows only under
      # --rename-dir-limit; no metadata cache, so every worker sees the others' writes at once.
      steps+=("mkdir -p $mount" "{ mountpoint -q $mount || gcsfuse --implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0 $bucket $mount; }")
    done
  fi
  if [[ $DATA_DIR == gs://* && $DATA_MODE == copy ]]; then
    steps+=("mkdir -p $REMOTE_BASE/tensorflow_datasets"
      "gcloud storage rsync --recursive $(quote_word "$DATA_DIR") $REMOTE_BASE/tensorflow_datasets")
  fi
  local line="" step
  for step in "${steps[@]}"; do
    line+="${line:+ && }$step"
  done
  printf '%s' "$line"
}

setup_workers() {
  [[ -z $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]] ||
    note "uncommitted changes are not copied: the workers get HEAD ($(git -C "$REPO_ROOT" rev-parse --short HEAD))"
  local config_file=${CONFIG%%:*}  # the workers read it from their copy of the checkout's root
  if [[ $config_file == /* ]]; then
    note "$config_file is an absolute path, which the workers' copy of the checkout is not at: pass it relative to" \
      "the checkout's root (configs/...), committed"
  elif [[ -n $config_file ]] && ! git -C "$REPO_ROOT" cat-file -e "HEAD:${config_file#./}" 2>/dev/null; then
    note "$config_file is not in HEAD, which is all the workers get: commit it first"
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz "--output=$(source_archive)" HEAD &&
    tpu_gcloud compute tpus tpu-vm scp "$(source_archive)" "$NAME:fer_jax_src.tar.gz" --worker=all &&
    on_all_workers "$(setup_script)"
}

# The worker-side training line: clear `stop`'s marker, record the pid (for stop), prefix every
# line with the host name.
run_script() {
  training_command "$REMOTE_PYTHON" "$CONFIG" "$(worker_path "$WORKDIR")" "$(worker_data_dir)" --distributed
  # shellcheck disable=SC2016  # $BASHPID and $(hostname) are the worker's
  printf 'rm -f %s && cd %s/src && set -o pipefail && (echo $BASHPID > %s && exec %s) 2>&1 | sed -u "s/^/[$(hostname)] /"' \
    "$STOP_MARKER" "$REMOTE_BASE" "$PID_FILE" "$(quote_command "${TRAINING_COMMAND[@]}")"
}

run_training() {
  on_all_workers "$(run_script)"
}

# The worker-side stop: SIGTERM, then wait until the training has saved its step and exited (a
# lost ssh session leaves it running, and the TPU takes one training at a time); SIGKILL after
# --stop-timeout (safe: the newest complete checkpoint stands).
# shellcheck disable=SC2016  # $pid and $(hostname) are the worker's
stop_script() {
  printf '%s || exit 0; ' "$(sigterm_training "$PID_FILE")"
  printf 'for _ in $(seq %s); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 1; done; ' "$STOP_TIMEOUT"
  printf 'echo "[$(hostname)] training still runs %s s after SIGTERM: SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null || true' \
    "$STOP_TIMEOUT"
}

stop_training() {
  on_all_workers "$(stop_script)"
}

# `tpu.sh stop`: its marker tells a resume loop that the training was stopped on purpose.
stop_command() {
  on_all_workers "touch $STOP_MARKER; $(stop_script)"
}

stop_requested() {
  [[ $(on_all_workers "if test -e $STOP_MARKER; then echo stop-requested; fi") == *stop-requested* ]]
}

# Runs until training ends without a preemption, or the retries are spent; returns its status.
resume_loop() {
  local status retries=0 state
  while :; do
    status=0
    run_training || status=$?
    ((status)) || return 0
    state=$(tpu_state)
    if [[ $state == READY ]] && ((status != 75 && status != 255)); then
      note "training failed with status $status on a READY TPU: not a preemption, not retried"
      return "$status"
    fi
    if ((retries >= MAX_RETRIES)); then
      note "status $status, TPU $state: no retries left (--max-retries=$MAX_RETRIES)"
      return "$status"
    fi
    retries=$((retries + 1))
    note "status $status, TPU $state: resuming from $WORKDIR (retry $retries of $MAX_RETRIES) in ${RETRY_WAIT} s"
    sleep "$RETRY_WAIT"
    if [[ $state == READY ]]; then
      stop_training || note "stopping the training on $NAME failed"
      # Checked only now: a `stop` during the wait above counts too.
      if stop_requested; then
        note "training was stopped by launch/tpu.sh stop (status $status): not run again"
        return "$status"
      fi
    else
      delete_tpu || true
      # A failure here (no capacity yet) only makes the next run fail and spend a retry.
      { create_tpu && setup_workers; } || note "re-creating $NAME failed"
    fi
  done
}

all() {
  local status=0
  trap interrupted INT TERM
  { create_tpu && setup_workers && resume_loop; } || status=$?
  trap - INT TERM
  keep_or_delete_tpu
  return "$status"
}

# A TPU that this `all` did not create (its create failed: no capacity, or one of that name was there) is not
# deleted: it may be another run's.
keep_or_delete_tpu() {
  if ((!CREATED)); then
    note "$NAME was not created by this run: not deleted (gcloud compute tpus tpu-vm list --zone=$ZONE lists yours)"
  elif ((KEEP)); then
    note "--keep: $NAME is still running (delete it with: launch/tpu.sh delete --name=$NAME --zone=$ZONE)"
  else
    delete_tpu
  fi
}

# Ctrl-C or SIGTERM during `run`, `resume-loop` or `all`: the training saves its step and stops (it ran on unseen,
# the TPU billed), and after `all` the TPU is deleted unless --keep, as after a failure.
interrupted() {
  trap - INT TERM
  note "interrupted: stopping the training on $NAME"
  stop_training || note "stopping the training on $NAME failed"
  if [[ $COMMAND == all ]]; then
    keep_or_delete_tpu || note "deleting $NAME failed: delete it with launch/tpu.sh delete --name=$NAME --zone=$ZONE"
  fi
  exit 130
}

main() {
  parse_args "$@"
  case $COMMAND in
    create) create_tpu ;;
    setup) setup_workers ;;
    run) trap interrupted INT TERM && run_training ;;
    stop) stop_command ;;
    resume-loop) trap interrupted INT TERM && resume_loop ;;
    delete) delete_tpu ;;
    all) all ;;
  esac
}

main "$@"
