# Shared by the launch scripts (sourced, never run): quoting, --dry-run, errors, the training
# command. Every external command goes through `run` (or `query` for one whose output is read),
# so --dry-run prints exactly what would run, one shell-quoted command per line.
# shellcheck shell=bash

# shellcheck disable=SC2034  # read by the scripts that source this file
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0
TRAINING_EXTRA_ARGS=() ENV_ASSIGNMENTS=()
# Dry-run lines go to the script's own stdout even from inside $(...).
exec 3>&1

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "[$(basename "$0")] $*" >&2
}

# One word as the shell reads it back: plain when safe, else single-quoted.
quote_word() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_command() {
  local word line=""
  for word in "$@"; do
    line+="${line:+ }$(quote_word "$word")"
  done
  printf '%s\n' "$line"
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((DRY_RUN)); then
    quote_command "$@" >&3
  else
    "$@"
  fi
}

# Runs a command and prints its output; under --dry-run prints the command and answers $1.
query() {
  local dry_answer=$1
  shift
  if ((DRY_RUN)); then
    quote_command "$@" >&3
    printf '%s\n' "$dry_answer"
  else
    "$@"
  fi
}

# Value of a --key=VALUE option; dies on a bare --key.
option_value() {
  [[ $1 == *=* ]] || die "$1 needs a value: write ${1}=VALUE (see --help)"
  printf '%s' "${1#*=}"
}

# Reads the options: each goes first to the function named $1, which takes the script's own
# options and returns 1 for any other; then --dry-run, --help and `--` (everything after it is
# passed to every fer_jax.main) are shared; anything else is an error.
parse_options() {
  local script_option=$1
  shift
  while (($#)); do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --help | -h) usage; exit 0 ;;
      --) shift; launcher_flags_after_dashes "$@"; TRAINING_EXTRA_ARGS=("$@"); return ;;
      *) "$script_option" "$1" || die "unknown argument $1 (options are written --key=VALUE; see --help)" ;;
    esac
    shift
  done
}

# What follows `--` goes to fer_jax.main: a launcher's own --dry-run or --help there would be lost (and the
# launch really made), so it is refused before anything starts.
launcher_flags_after_dashes() {
  local argument
  for argument in "$@"; do
    case $argument in
      --dry-run | --help | -h) die "$argument comes after --, where the arguments go to fer_jax.main: put it before --" ;;
    esac
  done
}

# --env=NAME=VALUE: for the launchers whose processes start on other machines, which their own environment does
# not reach.
env_option() {
  local assignment
  assignment=$(option_value "$1")
  # `env NAME` would run NAME as the command.
  [[ $assignment =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
    die "--env=$assignment: write --env=NAME=VALUE, e.g. --env=NCCL_DEBUG=INFO"
  ENV_ASSIGNMENTS+=("$assignment")
}

require() {
  local name
  for name in "$@"; do
    local flag=${name,,}
    [[ -n ${!name} ]] || die "--${flag//_/-}=... is required (see --help)"
  done
}

positive_integer() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1=$2 must be a positive integer"
}

port_number() {
  [[ $2 =~ ^[1-9][0-9]{0,4}$ && $2 -le 65535 ]] || die "$1=$2 must be a port number from 1 to 65535"
}

# The argv of one training process: `[env NAME=VALUE ...] PYTHON -m fer_jax.main --config ... --workdir ...`, then
# DATA_DIR, the given launcher flags and the user's extra arguments (after `--`).
training_command() {
  local python=$1 config=$2 workdir=$3 data_dir=$4
  shift 4
  TRAINING_COMMAND=("$python" -m fer_jax.main "--config=$config" "--workdir=$workdir")
  [[ -z $data_dir ]] || TRAINING_COMMAND+=("--config.dataset.data_dir=$data_dir")
  TRAINING_COMMAND+=("$@" "${TRAINING_EXTRA_ARGS[@]}")
  ((${#ENV_ASSIGNMENTS[@]} == 0)) || TRAINING_COMMAND=(env "${ENV_ASSIGNMENTS[@]}" "${TRAINING_COMMAND[@]}")
}

# The host-side shell text that sends SIGTERM to the training whose pid file is $1 and succeeds only
# if it did: the file outlives its process, so the pid must still be a fer_jax.main's.
# shellcheck disable=SC2016  # $pid is the host's
sigterm_training() {
  printf 'pid=$(cat %s 2>/dev/null) && grep -qsF fer_jax.main "/proc/$pid/cmdline" && kill -TERM "$pid"' "$1"
}
