#!/usr/bin/env bash
# Multi-host training over plain SSH, for machines without a scheduler.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: launch/ssh_hosts.sh --hosts=HOSTS --config=CONFIG --workdir=DIR [options] [-- --config.KEY=VALUE ...]

Starts process i of N on host i (over ssh, in parallel) with
  --distributed --coordinator_address=HOST0:PORT --num_processes=N --process_id=i
streams every log line prefixed with [i:host], and when one process fails (or on Ctrl-C) sends
SIGTERM to the others: on Ctrl-C they agree on a step, save it and exit 75 (Ctrl-C again leaves them
to it and exits at once); after a process died JAX ends the others without a save. Exit status: 0 when
every process succeeded, else the first failure's. Every host must see the same checkout, DATA_DIR and
WORKDIR (a shared folder), resolve HOST0 as written, and accept ssh without a password prompt.

  --hosts=LIST|FILE      comma list (host0,host1,...) or a file with one host per line (# comments)
  --config=CONFIG        configs/<method>.py:<dataset>
  --workdir=DIR          run folder, the same shared path on every host
  --data-dir=DIR         prepared TFDS folder (--config.dataset.data_dir), shared or copied to each host
  --port=PORT            coordinator port on host0 (default 12355)
  --repo-dir=DIR         the fer_jax checkout on the hosts (default: this one, $REPO_ROOT)
  --python=PATH          interpreter on the hosts, relative to --repo-dir or absolute (default .venv/bin/python)
  --env=KEY=VALUE        set in every process's environment (repeatable), e.g. --env=NCCL_DEBUG=INFO
  --ssh-option=OPTION    passed to ssh as -o OPTION (repeatable; BatchMode=yes is always set; yours replace
                         the defaults ServerAliveInterval=30, ServerAliveCountMax=4, ConnectTimeout=20,
                         which, given on ssh's command line, replace your ~/.ssh/config's too)
  --dry-run              print the commands, run nothing
  --help                 this text
Arguments after -- go to every fer_jax.main, e.g. -- --config.batch_size=512
EOF
}

HOSTS="" CONFIG="" WORKDIR="" DATA_DIR="" PORT=12355 REPO_DIR=$REPO_ROOT PYTHON=.venv/bin/python
SSH_OPTIONS=() INTERRUPTED=0

# One of this script's own options (parse_options reads the shared ones).
ssh_hosts_option() {
  case $1 in
    --hosts=*) HOSTS=$(option_value "$1") ;;
    --config=*) CONFIG=$(option_value "$1") ;;
    --workdir=*) WORKDIR=$(option_value "$1") ;;
    --data-dir=*) DATA_DIR=$(option_value "$1") ;;
    --port=*) PORT=$(option_value "$1") ;;
    --repo-dir=*) REPO_DIR=$(option_value "$1") ;;
    --python=*) PYTHON=$(option_value "$1") ;;
    --env=*) env_option "$1" ;;
    --ssh-option=*) SSH_OPTIONS+=(-o "$(option_value "$1")") ;;
    *) return 1 ;;
  esac
}

parse_args() {
  parse_options ssh_hosts_option "$@"
  require HOSTS CONFIG WORKDIR
  port_number --port "$PORT"
  # ssh keeps an option's first value: BatchMode before yours, the keepalive after (so yours win). A host that
  # dies is noticed in 2 minutes (not TCP's 2 hours), one that does not answer in 20 s.
  SSH_OPTIONS=(-o BatchMode=yes "${SSH_OPTIONS[@]}" -o ServerAliveInterval=30 -o ServerAliveCountMax=4
    -o ConnectTimeout=20)
}

# Dies unless $1 is one host, [user@]name; $2 says where it was read, $3 how to write it.
check_host() {
  [[ $1 =~ ^([^@[:space:]]+@)?[A-Za-z0-9._-]+$ ]] || die "$2: '$1' is not a host name; $3"
}

# HOST_LIST from a file (one per line, blank lines and # comments skipped) or a comma list.
read_hosts() {
  local line number=0 host
  HOST_LIST=()
  if [[ -f $HOSTS ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
      number=$((number + 1))
      line=${line%%#*}
      line=${line#"${line%%[![:space:]]*}"}
      line=${line%"${line##*[![:space:]]}"}
      [[ -n $line ]] || continue
      check_host "$line" "$HOSTS line $number" "write one host per line (# starts a comment)"
      HOST_LIST+=("$line")
    done <"$HOSTS"
  else
    [[ $HOSTS != */* && $HOSTS != *.@(txt|list|lst|hosts|conf|cfg|csv) ]] ||
      die "--hosts=$HOSTS: no such file; give an existing hosts file or a comma list, --hosts=node0,node1"
    # The comma added keeps a trailing empty entry, which read would drop.
    IFS=, read -r -a HOST_LIST <<<"$HOSTS,"
    for host in "${HOST_LIST[@]}"; do
      check_host "$host" "--hosts=$HOSTS" "write --hosts=node0,node1,... (no spaces, no empty entries)"
    done
  fi
  ((${#HOST_LIST[@]})) || die "--hosts=$HOSTS names no host"
}

# Process $1's pid file on its host, as a word of the remote command: named after the host user's id
# (`$(id -u)`, expanded there), since /tmp is every user's and another user's file of the same port and
# index would not be writable.
pid_file() {
  # shellcheck disable=SC2016  # expanded by the host's shell
  printf '/tmp/fer_jax_ssh_$(id -u)_%s_%s.pid' "$PORT" "$1"
}

# The shell command that process $1 runs on its host: it records its pid (for stop_process),
# then becomes fer_jax.main.
remote_command() {
  local index=$1 coordinator=${HOST_LIST[0]#*@}
  training_command "$PYTHON" "$CONFIG" "$WORKDIR" "$DATA_DIR" --distributed \
    "--coordinator_address=$coordinator:$PORT" "--num_processes=${#HOST_LIST[@]}" "--process_id=$index"
  printf 'cd %s && echo $$ > %s && exec %s' "$(quote_word "$REPO_DIR")" "$(pid_file "$index")" \
    "$(quote_command "${TRAINING_COMMAND[@]}")"
}

prefix_lines() {
  local line
  while IFS= read -r line; do
    printf '[%s] %s\n' "$1" "$line"
  done
}

start_process() {
  local index=$1 host=${HOST_LIST[$1]}
  if ((DRY_RUN)); then
    run ssh "${SSH_OPTIONS[@]}" "$host" "$(remote_command "$index")"
    return
  fi
  (
    trap '' INT  # Ctrl-C is the launcher's to handle (stop_all): ssh and the log prefixing outlive it
    # shellcheck disable=SC2029  # the command is built here, on purpose
    ssh "${SSH_OPTIONS[@]}" "$host" "$(remote_command "$index")" </dev/null 2>&1 | prefix_lines "$index:$host"
    exit "${PIPESTATUS[0]}"
  ) &
  PROCESS_OF_PID[$!]=$index
}

# SIGTERM to the training process on host $1: it saves its step and exits 75 (a process still
# connecting finds the last run's pid file, which sigterm_training leaves alone).
stop_process() {
  local index=$1
  # Its own Ctrl-C would cut the ssh that carries the SIGTERM (a second Ctrl-C waits for it: `interrupted`).
  (
    trap '' INT
    run ssh "${SSH_OPTIONS[@]}" "${HOST_LIST[$index]}" "$(sigterm_training "$(pid_file "$index")"); true"
  ) || true
}

# Each running process gets one SIGTERM, however many reasons to stop come (a second would end it unsaved).
stop_all() {
  local pid index
  for pid in "${!PROCESS_OF_PID[@]}"; do
    index=${PROCESS_OF_PID[$pid]}
    [[ -z ${SIGNALLED[$index]:-} ]] || continue
    SIGNALLED[$index]=1
    stop_process "$index"
  done
}

# A first Ctrl-C or SIGTERM stops every process and waits for their saves; a second one (run by bash between the
# first one's ssh calls) signals those not signalled yet, leaves them all to save and exits.
interrupted() {
  if ((INTERRUPTED)); then
    stop_all
    note "interrupted again: exiting; the processes go on saving their step"
    exit 130
  fi
  INTERRUPTED=1
  note "interrupted: stopping every process (again to exit at once, leaving them to save)"
  stop_all
}

# Waits for every process (polling: a trapped signal must not lose an exit status); stops the
# rest after the first failure, whose status it returns.
wait_all() {
  local pid status first_failure=0
  while ((${#PROCESS_OF_PID[@]})); do
    for pid in "${!PROCESS_OF_PID[@]}"; do
      ! kill -0 "$pid" 2>/dev/null || continue
      status=0
      wait "$pid" || status=$?
      note "process ${PROCESS_OF_PID[$pid]} (${HOST_LIST[${PROCESS_OF_PID[$pid]}]}) exited with status $status"
      unset "PROCESS_OF_PID[$pid]"
      if ((status && !first_failure)); then
        first_failure=$status
        stop_all
      fi
    done
    sleep 0.2 || true  # a Ctrl-C also ends this sleep: not a reason to exit (set -e)
  done
  return "$first_failure"
}

main() {
  parse_args "$@"
  read_hosts
  declare -gA PROCESS_OF_PID=() SIGNALLED=()
  local index
  for index in "${!HOST_LIST[@]}"; do
    start_process "$index"
  done
  ((DRY_RUN)) && return 0
  trap interrupted INT TERM
  wait_all
}

main "$@"
