#!/usr/bin/env bash
# Multi-node GPU training under Slurm: submits one batch job whose srun step starts every process.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/slurm.sh --config=CONFIG --workdir=DIR [options] [-- --config.KEY=VALUE ...]

Submits one sbatch job; its single srun step runs fer_jax.main --distributed on every node.
jax.distributed.initialize() reads the coordinator (first node of the step's node list, port
from the job id), the process count and each process's id from Slurm's variables, so nothing
is computed here. Default: one process per node driving all its GPUs; JAX would otherwise
give each process only the GPU numbered \$SLURM_LOCALID, so JAX_LOCAL_DEVICE_IDS lists them all.
--per-gpu: one process per GPU, each on GPU \$SLURM_LOCALID (JAX's own choice).
Every node must see the checkout, DATA_DIR and WORKDIR (a shared folder). The processes get
SIGTERM 120 s before the time limit (sbatch --signal), save and exit 75; submit the same
command again to resume from WORKDIR. A process that fails (any other non-zero status) cancels
the step (scancel), which stops the others; one that exits 75 leaves the others to finish saving.

  --config=CONFIG         configs/<method>.py:<dataset>
  --workdir=DIR           run folder on a shared file system
  --data-dir=DIR          prepared TFDS folder (--config.dataset.data_dir)
  --nodes=N               nodes (default 2)
  --gpus-per-node=G       GPUs per node (default 8)
  --per-gpu               one process per GPU instead of one per node
  --partition=P --account=A --time=T --job-name=NAME (default fer_jax) --output=FILE (default fer_jax_%j.log;
                            a relative one is in the checkout, where the job runs)
  --requeue               let Slurm requeue the job after a preemption or node failure (resumes)
  --port=PORT             coordinator port (JAX_COORDINATOR_PORT; default: derived from the job id)
  --python=PATH           interpreter, relative to the checkout or absolute (default .venv/bin/python)
  --sbatch-arg=ARG        any further sbatch option, e.g. --sbatch-arg=--cpus-per-task=32 (repeatable)
  --dry-run               print the sbatch command, submit nothing
  --help                  this text
Arguments after -- go to fer_jax.main, e.g. -- --config.batch_size=512
EOF
}

CONFIG="" WORKDIR="" DATA_DIR="" NODES=2 GPUS_PER_NODE=8 PER_GPU=0 PARTITION="" ACCOUNT="" TIME=""
JOB_NAME=fer_jax OUTPUT=fer_jax_%j.log REQUEUE=0 PORT="" PYTHON=.venv/bin/python SBATCH_ARGS=()

# One of this script's own options (parse_options reads the shared ones).
slurm_option() {
  case $1 in
    --config=*) CONFIG=$(option_value "$1") ;;
    --workdir=*) WORKDIR=$(option_value "$1") ;;
    --data-dir=*) DATA_DIR=$(option_value "$1") ;;
    --nodes=*) NODES=$(option_value "$1") ;;
    --gpus-per-node=*) GPUS_PER_NODE=$(option_value "$1") ;;
    --per-gpu) PER_GPU=1 ;;
    --partition=*) PARTITION=$(option_value "$1") ;;
    --account=*) ACCOUNT=$(option_value "$1") ;;
    --time=*) TIME=$(option_value "$1") ;;
    --job-name=*) JOB_NAME=$(option_value "$1") ;;
    --output=*) OUTPUT=$(option_value "$1") ;;
    --requeue) REQUEUE=1 ;;
    --port=*) PORT=$(option_value "$1") ;;
    --python=*) PYTHON=$(option_value "$1") ;;
    --sbatch-arg=*) SBATCH_ARGS+=("$(option_value "$1")") ;;
    *) return 1 ;;
  esac
}

parse_args() {
  parse_options slurm_option "$@"
  require CONFIG WORKDIR
  positive_integer --nodes "$NODES"
  positive_integer --gpus-per-node "$GPUS_PER_NODE"
  [[ -z $PORT ]] || port_number --port "$PORT"
}

# 0,1,…,G−1
all_gpu_ids() {
  local ids
  ids=$(seq -s, 0 $((GPUS_PER_NODE - 1)))
  printf '%s' "$ids"
}

# Each task's wrapper around fer_jax.main. srun's --kill-on-bad-exit would kill every task when the
# first one exits 75 after a stop, while the others may still be saving; so it is off, and the
# wrapper cancels the step itself on a real failure. It traps SIGTERM and SIGINT, which Slurm
# sends to every process of the step, to outlive fer_jax.main and pass its status on.
# shellcheck disable=SC2016  # expanded by the task's shell
TASK_WRAPPER='trap : TERM INT; "$@"; status=$?; '
# shellcheck disable=SC2016
TASK_WRAPPER+='((status == 0 || status == 75)) || scancel "$SLURM_JOB_ID.$SLURM_STEP_ID"; exit "$status"'

# Since Slurm 22.05 srun no longer inherits the job's --cpus-per-task; this hands it on (older
# versions ignore SRUN_CPUS_PER_TASK).
# shellcheck disable=SC2016  # expanded by the batch job's shell
CPUS_PER_TASK_TO_SRUN='[ -z "${SLURM_CPUS_PER_TASK:-}" ] || export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; '

# What the batch job runs: `…; env [JAX_…=…] srun … bash -c WRAPPER … python -m fer_jax.main … --distributed`.
job_command() {
  local environment=()
  ((PER_GPU)) || environment+=("JAX_LOCAL_DEVICE_IDS=$(all_gpu_ids)")
  [[ -z $PORT ]] || environment+=("JAX_COORDINATOR_PORT=$PORT")
  training_command "$PYTHON" "$CONFIG" "$WORKDIR" "$DATA_DIR" --distributed
  local step=(srun --kill-on-bad-exit=0 --label bash -c "$TASK_WRAPPER" fer_jax_task "${TRAINING_COMMAND[@]}")
  printf '%s' "$CPUS_PER_TASK_TO_SRUN"
  if ((${#environment[@]})); then
    quote_command env "${environment[@]}" "${step[@]}"
  else
    quote_command "${step[@]}"
  fi
}

main() {
  parse_args "$@"
  local tasks_per_node=1
  if ((PER_GPU)); then tasks_per_node=$GPUS_PER_NODE; fi
  local sbatch=(sbatch "--job-name=$JOB_NAME" "--nodes=$NODES" "--ntasks-per-node=$tasks_per_node"
    "--gpus-per-node=$GPUS_PER_NODE" "--output=$OUTPUT" "--chdir=$REPO_ROOT" --signal=TERM@120)
  [[ -z $PARTITION ]] || sbatch+=("--partition=$PARTITION")
  [[ -z $ACCOUNT ]] || sbatch+=("--account=$ACCOUNT")
  [[ -z $TIME ]] || sbatch+=("--time=$TIME")
  if ((REQUEUE)); then sbatch+=(--requeue); fi
  sbatch+=("${SBATCH_ARGS[@]}" "--wrap=$(job_command)")
  run "${sbatch[@]}"
}

main "$@"
