"""`fer_jax.main --distributed`'s start-up checks: the distributed flags (given without --distributed,
missing outside a detected cluster, inconsistent), and processes started with different configs,
which every process refuses before any work, naming the keys."""

import os
import socket
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

from fer_jax import distributed
from fer_jax.errors import UserError
from helpers import ROOT, assert_user_error, cpu_devices_env, free_port, get_config, killed_at_end, run_command

TINY = ["--config=configs/dan.py:synthetic", "--config.dataset.name=synthetic/tiny", "--config.input.size=32",
        "--config.num_epochs=1", "--config.data_workers=0"]


def _flags(coordinator_address=None, num_processes=None, process_id=None) -> dict:
  return {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}


def test_distributed_flags_without_distributed_are_refused():
  with pytest.raises(UserError, match=r"^--num_processes, --process_id take effect with --distributed only: add "
                                      r"--distributed"):
    distributed.check_flags(False, _flags(num_processes=2, process_id=1))
  with pytest.raises(UserError, match=r"^--num_processes takes effect with --distributed only: add --distributed \(or "
                                      r"drop it\)"):
    distributed.check_flags(False, _flags(num_processes=2))
  distributed.check_flags(False, _flags())


def test_inconsistent_distributed_flags_are_refused():
  with pytest.raises(UserError, match=r"--process_id=2 is not below --num_processes=2: number the processes 0 … 1"):
    distributed.check_flags(True, _flags("localhost:1234", 2, 2))
  with pytest.raises(UserError, match=r"--coordinator_address=localhost needs a port: pass HOST:PORT"):
    distributed.check_flags(True, _flags("localhost", 2, 0))
  distributed.check_flags(True, _flags("localhost:1234", 2, 1))
  distributed.check_flags(True, _flags())  # a cluster JAX detects fills them in


def test_coordinator_address_from_the_environment_needs_a_port(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node0")
  with pytest.raises(UserError, match=r"^JAX_COORDINATOR_ADDRESS=node0 needs a port: pass HOST:PORT"):
    distributed.check_flags(True, _flags(num_processes=2, process_id=0))
  distributed.check_flags(False, _flags())
  distributed.check_flags(True, _flags("node0:1234", 2, 0))  # the flag is what JAX uses
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node0:1234")
  distributed.check_flags(True, _flags(num_processes=2, process_id=0))


def test_a_coordinator_that_does_not_resolve_or_answer_is_named(monkeypatch):
  port = free_port()  # nothing listens there
  monkeypatch.setattr(distributed, "COORDINATOR_TIMEOUT_S", 0.5)
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **_: pytest.fail("JAX was left to wait"))
  with pytest.raises(UserError, match=rf"^Nothing answered at --coordinator_address=127.0.0.1:{port} \(process 0\) "
                                      r"within 0.5 s: start process 0 there, or correct the address"):
    distributed.start(f"127.0.0.1:{port}", 2, 1)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "no-such-host.invalid:1234")
  with pytest.raises(UserError, match=r"^JAX_COORDINATOR_ADDRESS=no-such-host.invalid:1234: no-such-host.invalid does "
                                      r"not resolve on this host"):
    distributed.start(None, 2, 1)
  with socket.create_server(("127.0.0.1", 0)) as listening:
    distributed.wait_for_coordinator(f"127.0.0.1:{listening.getsockname()[1]}", "--coordinator_address", 0.5)


def test_an_address_is_split_into_its_host_without_ipv6_brackets_and_its_port():
  assert distributed.host_and_port("[::1]:1234") == ("::1", 1234)
  assert distributed.host_and_port("node0.cluster:80") == ("node0.cluster", 80)


def test_config_differences_name_each_key_and_both_values():
  zero = {"batch_size": 32, "seed": 0, "input.eval_pp": "x" * 80, "--mode": "train"}
  one = {"batch_size": 16, "seed": 0, "input.eval_pp": "x" * 79 + "y", "--mode": "train", "model.remat": False}
  assert distributed.config_differences([zero, one]) == (
      f"batch_size: 32 on process 0, 16 on process 1; input.eval_pp: \"{'x' * 58}… on process 0, "
      f"\"{'x' * 58}… on process 1; model.remat: no such key on process 0, false on process 1")
  assert distributed.config_differences([zero, zero, one, one]) == (
      f"batch_size: 32 on process 0, 16 on process 2 (2 processes differ); input.eval_pp: \"{'x' * 58}… on process "
      f"0, \"{'x' * 58}… on process 2 (2 processes differ); model.remat: no such key on process 0, false on process 2 "
      "(2 processes differ)")
  assert distributed.config_differences([{"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}, {}]).endswith(
      "on process 1 … (5 in all)")


def test_process_0_refuses_a_coordinator_port_in_use(monkeypatch):
  """JAX's service segfaulted process 0 at once ("Failed to add port to server") and the others waited
  five minutes for it."""
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **_: pytest.fail("JAX was started"))
  with socket.create_server(("127.0.0.1", 0)) as taken:  # an earlier run's coordinator, on one interface only
    port = taken.getsockname()[1]
    with pytest.raises(UserError, match=rf"^--coordinator_address=localhost:{port}: port {port} is already in use on "
                                        r"this host \(process 0's\), so the coordinator cannot listen there. An "
                                        r"earlier run still alive\? Stop it, or pass another port to every process."):
      distributed.start(f"localhost:{port}", 2, 0)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", f"node0:{port}")
    with pytest.raises(UserError, match=rf"^JAX_COORDINATOR_ADDRESS=node0:{port}: port {port} is already in use"):
      distributed.start(None, 2, 0)
    monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(UserError, match=rf"^JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:{port}: port {port} is already"):
      distributed.check_port_free(f"node0:{port}", "--coordinator_address", f"127.0.0.1:{port}")
  distributed.check_port_free(f"localhost:{port}", "--coordinator_address")  # free again


def test_process_0_accepts_a_free_port_and_a_closed_connections_time_wait():
  with socket.create_server(("127.0.0.1", 0)) as server:
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its port is left in TIME_WAIT
    client.close()
  distributed.check_port_free(f"localhost:{port}", "--coordinator_address")


def _devices(*processes: int) -> list:
  return [types.SimpleNamespace(process_index=index, id=number) for number, index in enumerate(processes)]


def test_processes_with_unequal_device_counts_are_named():
  """Process 0 with 2 devices, process 1 with 1: check_same_run's gather failed with `cannot reshape array
  of size 3 into shape (2,2)`."""
  distributed.check_device_counts(_devices(0, 0, 1, 1), 2)
  distributed.check_device_counts(_devices(0), 1)
  with pytest.raises(UserError, match=r"^The processes have different numbers of devices \(process 0: 2, process 1: "
                                      r"1\): every process needs as many. Give each the same number: "
                                      r"CUDA_VISIBLE_DEVICES \(GPUs\), JAX_LOCAL_DEVICE_IDS, or on CPU "
                                      r"XLA_FLAGS=--xla_force_host_platform_device_count=N"):
    distributed.check_device_counts(_devices(0, 0, 1), 2)
  with pytest.raises(UserError, match=r"\(process 0: 1, process 1: 1, process 2: 0\)"):
    distributed.check_device_counts(_devices(0, 1), 3)


def test_a_num_processes_other_than_process_0s_is_refused():
  """A process given --num_processes=3 joined process 0's run of 2, and trained to the end as one of 2."""
  distributed.check_process_count(None, 2)  # left to a cluster JAX detects
  distributed.check_process_count(2, 2)
  with pytest.raises(UserError, match=r"^--num_processes=3, but process 0 started the run for 2 processes: give every "
                                      r"process the same --num_processes\.$"):
    distributed.check_process_count(3, 2)


@pytest.mark.integration
def test_a_run_whose_processes_joined_outlives_the_join_timeout():
  """The watchdog that ends a process whose run never gathered is cancelled once it did."""
  script = ("import time; from fer_jax import distributed; distributed.COORDINATOR_TIMEOUT_S = 1; "
            f"distributed.start('127.0.0.1:{free_port()}', 1, 0); time.sleep(3); print('alive')")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                          text=True, timeout=120)
  assert (result.returncode, result.stdout) == (0, "alive\n"), result.stderr[-2000:]


@pytest.mark.integration
def test_a_process_that_never_joins_ends_the_others_with_a_message_not_a_native_abort():
  """Process 0 of 2, whose process 1 failed before joining: it waited 5 minutes, then JAX aborted it (SIGABRT, a C++
  stack trace). Here the wait is 3 s."""
  port = free_port()
  script = ("import sys; from fer_jax import distributed; distributed.COORDINATOR_TIMEOUT_S = 3; "
            f"distributed.start('127.0.0.1:{port}', 2, 0)")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                          text=True, timeout=120)
  assert_user_error(result, f"error: --distributed: the 2 processes did not all join the run at 127.0.0.1:{port} "
                            "within 3 s. A process failed before joining (see its log), or was given another "
                            "--coordinator_address or --num_processes")


class _Processes:
  """Runs a function on `count` threads standing for processes, whose process_allgather stacks what
  each thread gave, as jax's does across processes; `gather` lists what each gave, as the coordination
  service's key-value store does for distributed._gather_strings."""

  def __init__(self, count: int):
    self._barrier, self._given, self._index = threading.Barrier(count, timeout=60), [None] * count, threading.local()

  def gather(self, name, text):
    del name
    return list(self.allgather(text))

  def allgather(self, value):
    self._given[self._index.value] = np.asarray(value)
    self._barrier.wait()
    gathered = np.stack(self._given)
    self._barrier.wait()  # every thread has read this round before the next one's values arrive
    return gathered

  def run(self, function, arguments: list) -> list:
    """What `function(*arguments[i])` returned or raised on each thread i."""
    outcomes = [None] * len(arguments)

    def on_thread(index):
      self._index.value = index
      try:
        outcomes[index] = function(*arguments[index])
      except Exception as error:  # pylint: disable=broad-except
        outcomes[index] = error

    threads = [threading.Thread(target=on_thread, args=(index,)) for index in range(len(arguments))]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    return outcomes


def test_every_process_refuses_configs_that_differ_naming_the_keys(monkeypatch):
  processes = _Processes(2)
  monkeypatch.setattr(distributed.multihost_utils, "process_allgather", processes.allgather)
  configs = [get_config("configs/dan.py:synthetic") for _ in range(2)]
  assert processes.run(distributed.check_same_run, [(config, "train") for config in configs]) == [None, None]
  configs[1].batch_size, configs[1].optimizer.lr = 16, 0.5
  outcomes = processes.run(distributed.check_same_run, [(config, "train") for config in configs])
  assert all(isinstance(outcome, UserError) for outcome in outcomes), outcomes
  assert str(outcomes[0]) == str(outcomes[1]) == (
      "The processes were started with different configs: batch_size: 32 on process 0, 16 on process 1; "
      f"optimizer.lr: {configs[0].optimizer.lr} on process 0, 0.5 on process 1. Start every process with the same "
      "--config, --config.* flags and --mode.")
  outcomes = processes.run(distributed.check_same_run, [(configs[0], "train"), (configs[0], "eval")])
  assert all("--mode: \"train\" on process 0, \"eval\" on process 1" in str(outcome) for outcome in outcomes)


def test_processes_that_read_different_copies_of_a_split_stop_together_naming_them():
  """Hosts with their own prepared copies, one of which lacks an image: each trained other examples at the same
  positions (or evaluated other images), and only a resumed run compared its training split (with the checkpoint's
  record)."""
  same = {"prepared": "rafdb/default/1.0.0", "records": 12271, "used": 12271, "labels_sha256": "ab" * 32}
  other = {**same, "records": 12270, "used": 12270, "labels_sha256": "cd" * 32}
  processes = _Processes(3)
  splits = [("the training split", split, folder, processes.gather)
            for split, folder in [(same, "/data/a"), (same, "/data/b"), (other, "/local/c")]]
  outcomes = processes.run(distributed.same_split_check, splits)
  assert [type(outcome) for outcome in outcomes] == [UserError] * 3
  host = socket.gethostname()
  assert str(outcomes[0]) == str(outcomes[2]) == (
      f"The processes read different copies of the training split: process 0 on {host} prepared as "
      f"rafdb/default/1.0.0, 12271 records (12271 used), labels abababababab… in /data/a, process 2 on {host} prepared "
      "as rafdb/default/1.0.0, 12270 records (12270 used), labels cdcdcdcdcdcd… in /local/c. Give every process the "
      "same prepared set: one folder all hosts share as --config.dataset.data_dir (or the evaluator's data_dir), or "
      "copies of the very folder process 0 reads.")
  two = _Processes(2)
  same_splits = [("evaluator test's split", same, folder, two.gather) for folder in ("/data/a", "/data/b")]
  assert two.run(distributed.same_split_check, same_splits) == [None, None]  # folders may differ


def test_processes_that_read_different_weights_stop_together_naming_them():
  """A stale copy of init_from or --checkpoint on one host: every process ended in JAX's AssertionError that a
  device_put's array is not the same on each process."""
  processes = _Processes(3)
  outcomes = processes.run(distributed.same_weights_check, [("--checkpoint=run", digest, processes.gather)
                                                            for digest in ("ab" * 32, "ab" * 32, "cd" * 32)])
  host = socket.gethostname()
  assert [str(outcome) for outcome in outcomes] == [
      f"The processes read different weights from --checkpoint=run: process 0 on {host} params_sha256 abababababab…, "
      f"process 2 on {host} params_sha256 cdcdcdcdcdcd…. Give every process the same files: one folder all hosts "
      "share, or copies of the very folder process 0 reads (`python -m fer_jax.summary --checkpoint=PATH` prints a "
      "copy's params_sha256)."] * 3
  two = _Processes(2)
  assert two.run(distributed.same_weights_check, [("--checkpoint=run", "ab" * 32, two.gather)] * 2) == [None, None]


def test_a_user_error_of_process_0_is_raised_on_every_process():
  """The workdir lock is process 0's: another run holding it stopped process 0 alone, and the others went on into
  the run to lose it in their first collective (exit 75, 'another process stopped or died')."""
  processes = _Processes(2)
  message = "Another training runs in /w (process 7 on host, since …, holding .training.lock): wait for it …"
  outcomes = processes.run(distributed.process_zeros_error_check, [(message, processes.gather), ("", processes.gather)])
  assert [type(outcome) for outcome in outcomes] == [UserError, UserError]
  assert str(outcomes[0]) == str(outcomes[1]) == message
  assert processes.run(distributed.process_zeros_error_check, [("", processes.gather)] * 2) == [None, None]


def test_a_user_error_of_any_process_is_raised_on_every_process():
  """A check of per-host state (init_from on one host's disk, the data prepared there, its free memory) failed on
  process 1 alone: it exited 2 and the others waited out JAX's 100 s heartbeat timeout in their next barrier, then
  exited 75 as if preempted (distributed.errors_together)."""
  processes = _Processes(3)
  message = "The config cannot run:\n  config.init_from=init does not exist: pass a training workdir, …"
  outcomes = processes.run(distributed.any_process_error_check,
                           [("", processes.gather), (message, processes.gather), ("", processes.gather)])
  assert [type(outcome) for outcome in outcomes] == [UserError] * 3
  assert all(str(outcome) == f"process 1: {message}" for outcome in outcomes)
  assert processes.run(distributed.any_process_error_check, [("", processes.gather)] * 3) == [None] * 3


def _check_workdirs(workdirs: list) -> list:
  """What shared_workdir_check raised (or None) on each of len(workdirs) processes (threads)."""
  processes = _Processes(len(workdirs))
  return processes.run(distributed.shared_workdir_check,
                       [(str(workdir), index, processes.gather) for index, workdir in enumerate(workdirs)])


def _leftover_tokens(folder) -> list:
  return [name for name in os.listdir(folder) if name.startswith(distributed.SHARED_CHECK_PREFIX)]


def test_one_shared_workdir_passes_however_each_process_spells_it(tmp_path):
  (tmp_path / "link").symlink_to(tmp_path / "run", target_is_directory=True)  # process 0 creates run/
  assert _check_workdirs([tmp_path / "run", tmp_path / "link", f"{tmp_path}/./run/"]) == [None, None, None]
  # The folder made for the check alone is removed: a run its config then stops leaves no workdir behind.
  assert not (tmp_path / "run").exists()
  (tmp_path / "kept").mkdir()
  assert _check_workdirs([tmp_path / "kept", tmp_path / "kept"]) == [None, None]
  assert (tmp_path / "kept").is_dir() and _leftover_tokens(tmp_path / "kept") == []


def test_processes_whose_workdirs_differ_all_stop_naming_them(tmp_path, monkeypatch):
  """Given different folders (or local disks), the processes trained to the end and failed at the next resume."""
  monkeypatch.setattr(distributed, "TOKEN_WAIT_S", 0.2)
  (tmp_path / "other").mkdir()
  outcomes = _check_workdirs([tmp_path / "run", tmp_path / "run", tmp_path / "other"])
  assert all(isinstance(outcome, UserError) for outcome in outcomes), outcomes
  assert str(outcomes[0]) == str(outcomes[1]) == str(outcomes[2]) == (
      f"process 2: --workdir={tmp_path}/other is not the folder process 0 sees ({tmp_path}/run on "
      f"{socket.gethostname()}): every process needs the same shared folder. Start every process with --workdir set to "
      "one folder shared by all hosts (a network file system or mounted bucket; the path may differ per host).")
  assert not (tmp_path / "run").exists() and os.listdir(tmp_path / "other") == []


def test_a_file_given_as_workdir_stops_every_process(tmp_path, monkeypatch):
  """A process given a regular file as its workdir trained along."""
  monkeypatch.setattr(distributed, "TOKEN_WAIT_S", 0.2)
  (tmp_path / "file").write_text("x")
  for workdirs, culprit in [([tmp_path / "run", tmp_path / "file"], 1), ([tmp_path / "file", tmp_path / "run"], 0)]:
    outcomes = _check_workdirs(workdirs)
    assert all(isinstance(outcome, UserError) for outcome in outcomes), outcomes
    assert all(str(outcome).startswith(f"process {culprit}: --workdir={tmp_path}/file is a file, not a folder. Start "
                                       "every process with --workdir set to one folder") for outcome in outcomes)
  assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "run").exists()


@pytest.mark.integration
def test_distributed_flags_without_distributed_stop_the_command(tmp_path):
  result = run_command("fer_jax.main", *TINY, f"--workdir={tmp_path}", "--coordinator_address=localhost:1234",
                       "--num_processes=2", "--process_id=1")
  assert_user_error(result, "--coordinator_address, --num_processes, --process_id take effect with --distributed "
                    "only: add --distributed")


@pytest.mark.integration
def test_distributed_outside_a_cluster_names_the_missing_flags(tmp_path):
  result = run_command("fer_jax.main", *TINY, f"--workdir={tmp_path}", "--distributed", "--process_id=0")
  assert_user_error(result, "--distributed could not start: coordinator_address should be defined.",
                    "add --coordinator_address, --num_processes (every process the same")
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.integration
def test_two_processes_with_different_configs_both_stop_before_any_work(tmp_path, tiny_data_dir):
  """Started with batch sizes 32 and 16, two processes trained against each other, then hung; with
  epochs 1 and 2, one ended and the other died in a gloo error."""
  address, workdir = f"localhost:{free_port()}", tmp_path / "run"
  logs = [tmp_path / f"process_{index}.log" for index in range(2)]
  differing = [["--config.batch_size=32", "--config.num_epochs=1"], ["--config.batch_size=16", "--config.num_epochs=2"]]
  with logs[0].open("w") as log_0, logs[1].open("w") as log_1:
    started = [subprocess.Popen([sys.executable, "-m", "fer_jax.main", *TINY, *differing[index], f"--workdir={workdir}",
                                 f"--config.dataset.data_dir={tiny_data_dir}", "--distributed",
                                 f"--coordinator_address={address}", "--num_processes=2", f"--process_id={index}"],
                                cwd=ROOT, env=cpu_devices_env(1), stdout=subprocess.DEVNULL, stderr=log)
               for index, log in enumerate((log_0, log_1))]
    with killed_at_end(started) as processes:
      codes = [process.wait(timeout=300) for process in processes]
  for code, log in zip(codes, logs):
    assert_user_error(subprocess.CompletedProcess([], code, "", log.read_text()),
                      "The processes were started with different configs: batch_size: 32 on process 0, 16 on process "
                      "1; num_epochs: 1 on process 0, 2 on process 1. Start every process with the same --config")
  assert not workdir.exists()


def test_an_evaluator_one_process_alone_skips_stops_every_process():
  """A skip_if_missing split prepared on one host only: that process skipped the evaluator and the other's next
  key-value exchange (errors_together in Evaluators.data) waited 300 s for it, then exited 75."""
  processes = _Processes(2)
  outcomes = processes.run(distributed.absences_check, [("", "Evaluator pose45", processes.gather),
                                                        ("no split 'test_pose45'", "Evaluator pose45", processes.gather)])
  assert [type(outcome) for outcome in outcomes] == [UserError] * 2
  assert all(str(outcome).startswith("Evaluator pose45: process 1 skips it (no split 'test_pose45'), process 0 does "
                                     "not") for outcome in outcomes)
  assert processes.run(distributed.absences_check, [("gone", "e", processes.gather)] * 2) == [None, None]
