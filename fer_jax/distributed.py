"""Several processes as one run: jax.distributed started from the command's flags, and every
process checked before any work (`fer_jax.main --distributed`): process 0's coordinator port free,
as many devices on every process, the same config, and one shared workdir."""

import collections
import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from typing import Callable

from absl import logging
import jax
from jax._src import distributed as jax_distributed  # the coordinator's address: no public form
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from fer_jax import config_lib
from fer_jax import errors
from fer_jax import mesh as mesh_lib
from fer_jax.errors import USER_ERROR_STATUS
from fer_jax.errors import UserError

FLAGS = ("coordinator_address", "num_processes", "process_id")
COORDINATOR_TIMEOUT_S = 300  # how long the processes wait for each other: to join the run, at an exchange
JAX_MARGIN_S = 30  # jax.distributed.initialize's own timeout beyond ours: our watchdog ends the process first, in words


def check_flags(distributed: bool, values: dict) -> None:
  """`values`: {flag name: value or None} of FLAGS. Refuses those given without
  --distributed (the process would train alone), a coordinator address (flag or JAX_COORDINATOR_ADDRESS)
  without a port and a process_id outside num_processes."""
  given = [f"--{name}" for name, value in values.items() if value is not None]
  if given and not distributed:
    verb = "takes" if len(given) == 1 else "take"
    raise UserError(f"{', '.join(given)} {verb} effect with --distributed only: add --distributed (or drop "
                    f"{'it' if len(given) == 1 else 'them'}).")
  address, count, index = (values[name] for name in FLAGS)
  _check_port("--coordinator_address", address)
  if distributed and address is None:
    _check_port("JAX_COORDINATOR_ADDRESS", os.environ.get("JAX_COORDINATOR_ADDRESS") or None)
  if count is not None and index is not None and index >= count:
    raise UserError(f"--process_id={index} is not below --num_processes={count}: number the processes 0 … {count - 1}.")


HOST_PORT = re.compile(r".+:\d+")  # an address of process 0's coordinator


def _check_port(name: str, address: str | None) -> None:
  if address is not None and not HOST_PORT.fullmatch(address):
    raise UserError(f"{name}={address} needs a port: pass HOST:PORT of process 0 (e.g. {address}:1234).")


def start(coordinator_address, num_processes, process_id) -> None:
  """jax.distributed.initialize; CPU devices exchange collectives over gloo (only the CPU backend
  reads that setting). On Cloud TPU and Slurm JAX fills in the flags not given; elsewhere those
  missing are named."""
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  flag = "--coordinator_address" if coordinator_address else "JAX_COORDINATOR_ADDRESS"
  if address and process_id:
    wait_for_coordinator(address, flag, COORDINATOR_TIMEOUT_S)
  if address and process_id == 0:
    check_port_free(address, flag, os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or None)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info("Joining the run of %s processes at %s (up to %d s for all of them).", num_processes or "the",
               address or "the address the cluster gives", COORDINATOR_TIMEOUT_S)
  watchdog = threading.Timer(COORDINATOR_TIMEOUT_S, _not_all_joined, (address, num_processes))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=COORDINATOR_TIMEOUT_S + JAX_MARGIN_S)
  except ValueError as error:
    given = {"coordinator_address": coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
             "num_processes": num_processes, "process_id": process_id}
    missing = [f"--{name}" for name, value in given.items() if value is None]
    if not missing:
      raise
    raise UserError(f"--distributed could not start: {error} Outside a cluster JAX detects (Cloud TPU, Slurm), add "
                    f"{', '.join(missing)} (every process the same --coordinator_address=HOST:PORT of process 0 and "
                    "--num_processes, each its own --process_id).") from error
  finally:
    watchdog.cancel()
  mesh_lib.keep_no_cpu_compilations()
  with errors_together():
    check_process_count(num_processes, jax.process_count())
  _together(check_device_counts, jax.devices(), jax.process_count())


def _not_all_joined(address: str | None, num_processes: int | None) -> None:
  """Ends this process where jax.distributed.initialize still waits for a process that never came (one that failed
  at start-up, or was given another address or count): JAX would abort it with a native stack trace after its own
  timeout."""
  count = f"the {num_processes}" if num_processes else "the"
  print(f"error: --distributed: {count} processes did not all join the run at {address or 'the coordinator'} within "
        f"{COORDINATOR_TIMEOUT_S} s. A process failed before joining (see its log), or was given another "
        "--coordinator_address or --num_processes: start every process with the same ones.", file=sys.stderr,
        flush=True)
  os._exit(USER_ERROR_STATUS)  # pylint: disable=protected-access  # initialize holds this process in native code


def check_process_count(given: int | None, joined: int) -> None:
  """A --num_processes other than process 0's, whose count the run takes: a launcher's mistake, refused."""
  if given is not None and given != joined:
    raise UserError(f"--num_processes={given}, but process 0 started the run for {joined} processes: give every "
                    "process the same --num_processes.")


def _together(check, *args) -> None:
  """check(*args); where it raises a UserError (every process raises it at the same point), this process leaves
  the coordination service first, with the others (its shutdown barrier): cli.run ends a process at once, and
  process 0's end would otherwise abort a process still talking to the service, before it prints its error."""
  try:
    check(*args)
  except UserError:
    try:
      jax.distributed.shutdown()
    except Exception:  # pylint: disable=broad-except  # a process that died: the error still goes out
      pass
    raise


def host_and_port(address: str) -> tuple[str, int]:
  """HOST:PORT's host (an IPv6 address's brackets removed) and port."""
  host, port = address.rsplit(":", 1)
  return host.strip("[]"), int(port)


def check_port_free(address: str, flag: str, bind_address: str | None = None) -> None:
  """Process 0 (its --process_id given as 0) binds the coordinator's port for a moment: where it is taken, JAX's
  service would kill this process with a segfault and leave the others waiting five minutes. Binds all
  interfaces (IPv4 and IPv6), as JAX's service does, or JAX_COORDINATOR_BIND_ADDRESS's host where set; with
  SO_REUSEADDR (a closed connection's TIME_WAIT does not stop JAX either), never SO_REUSEPORT.

  Where --process_id is left to a cluster JAX detects, this process may not be process 0, and on process 0's
  host it would find process 0's own service there: no check."""
  host, port = host_and_port(bind_address or address)
  if bind_address:
    dual = False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
  else:
    dual = socket.has_dualstack_ipv6()
    host, family = ("::", socket.AF_INET6) if dual else ("", socket.AF_INET)
  try:
    socket.create_server((host, port), family=family, dualstack_ipv6=dual).close()
  except OSError as error:
    name = "JAX_COORDINATOR_BIND_ADDRESS" if bind_address else flag
    if error.errno == errno.EADDRINUSE:
      raise UserError(f"{name}={bind_address or address}: port {port} is already in use on this host (process 0's), "
                      "so the coordinator cannot listen there. An earlier run still alive? Stop it, or pass another "
                      "port to every process.") from None
    if error.errno == errno.EACCES:
      raise UserError(f"{name}={bind_address or address}: this user may not listen on port {port} "
                      f"({error.strerror}): pass a port above 1023 to every process.") from None
    raise UserError(f"{name}={bind_address or address}: process 0 cannot listen on port {port} here "
                    f"({error.strerror}): pass this host's name and a free port to every process.") from None


def check_device_counts(devices, process_count: int) -> None:
  """Every process must bring as many devices: the batch is split evenly over processes, and JAX's own gathers
  fail with a reshape error otherwise. Counted from `devices` (every process's, each with a process_index), no
  collective; the same message on every process."""
  counts = collections.Counter(device.process_index for device in devices)
  if len({counts[index] for index in range(process_count)}) > 1:
    listed = ", ".join(f"process {index}: {counts[index]}" for index in range(process_count))
    raise UserError(f"The processes have different numbers of devices ({listed}): every process needs as many. "
                    "Give each the same number: CUDA_VISIBLE_DEVICES (GPUs), JAX_LOCAL_DEVICE_IDS, or on CPU "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=N (set or unset alike on every host).")


def wait_for_coordinator(address: str, flag: str, timeout_s: float) -> None:
  """Returns once something listens at process 0's HOST:PORT. Where the host does not resolve here, or nothing
  answers within `timeout_s`, a UserError names the address: JAX itself would abort the process after five
  minutes with a native stack trace that blames another task."""
  host, port = host_and_port(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host, port), timeout=5).close()
      return
    except socket.gaierror as error:
      raise UserError(f"{flag}={address}: {host} does not resolve on this host ({error.strerror}): give process "
                      "0's host a name or address that every process's host resolves.") from None
    except OSError:
      if time.monotonic() > deadline:
        raise UserError(f"Nothing answered at {flag}={address} (process 0) within {timeout_s:g} s: start process 0 "
                        "there, or correct the address; its port must be open to this host.") from None
      time.sleep(1)


def check_same_run(config, mode: str) -> None:
  """Stops every process, naming the keys, if their configs (or --mode) differ: they would exchange
  gradients of different batches or steps, or wait for each other forever. A collective: each process
  gathers every process's fingerprint and, on a difference, every process's config."""
  _together(_check_same_run, config, mode)


def _check_same_run(config, mode: str) -> None:
  own = json.dumps({"--mode": mode, **config_lib.flat(config)}, sort_keys=True).encode()
  digests = multihost_utils.process_allgather(np.frombuffer(hashlib.sha256(own).digest(), np.uint8))
  if (digests == digests[0]).all():
    return
  lengths = multihost_utils.process_allgather(np.int32(len(own)))
  padded = np.zeros(lengths.max(), np.uint8)
  padded[:len(own)] = np.frombuffer(own, np.uint8)
  texts = multihost_utils.process_allgather(padded)
  configs = [json.loads(text[:length].tobytes()) for text, length in zip(texts, lengths)]
  raise UserError(f"The processes were started with different configs: {config_differences(configs)}. Start every "
                  "process with the same --config, --config.* flags and --mode.")


def check_same_split(what: str, identity: dict, prepared_in: str) -> None:
  """Stops every process unless each read the same split `what` (the training split, an evaluator's;
  `pipeline.split_identity`): hosts with their own copies of a set prepared apart (an image skipped on one, another
  builder version) would train other examples at the same positions, or evaluate on other images, unseen. Exchanges
  through the coordination service, no device collective."""
  if jax.process_count() > 1:
    _together(same_split_check, what, identity, prepared_in, _gather_strings)


def same_split_check(what: str, identity: dict, prepared_in: str, gather) -> None:
  """check_same_split on one process; `gather(name, text)` returns every process's text for `name`."""
  own = json.dumps([identity, prepared_in, socket.gethostname()])
  splits = [json.loads(text) for text in gather("split", own)]
  differing = [index for index, (other, _, _) in enumerate(splits) if other != splits[0][0]]
  if differing:
    described = [f"process {index} on {host} {_split_in_words(split)} in {folder}"
                 for index, (split, folder, host) in ((i, splits[i]) for i in (0, differing[0]))]
    more = f" ({len(differing)} processes differ from process 0)" if len(differing) > 1 else ""
    raise UserError(f"The processes read different copies of {what}: {described[0]}, {described[1]}{more}. Give "
                    "every process the same prepared set: one folder all hosts share as --config.dataset.data_dir "
                    "(or the evaluator's data_dir), or copies of the very folder process 0 reads.")


def check_same_weights(source: str, digest: Callable[[], str]) -> None:
  """Stops every process unless each loaded the same weights from `source` ("--checkpoint=PATH"), `digest()` their
  fingerprint (`checkpointing.fingerprint`, computed where there are several processes): a stale copy on one host
  ended every process in JAX's assertion that a device_put's array differs between processes, naming neither the
  path nor the host. Exchanges through the coordination service, no device collective."""
  if jax.process_count() > 1:
    _together(same_weights_check, source, digest(), _gather_strings)


def same_weights_check(source: str, digest: str, gather) -> None:
  """check_same_weights on one process; `gather(name, text)` returns every process's text for `name`."""
  loaded = [json.loads(text) for text in gather("weights", json.dumps([digest, socket.gethostname()]))]
  differing = [index for index, (other, _) in enumerate(loaded) if other != loaded[0][0]]
  if differing:
    described = [f"process {index} on {loaded[index][1]} params_sha256 {loaded[index][0][:12]}…"
                 for index in (0, differing[0])]
    more = f" ({len(differing)} processes differ from process 0)" if len(differing) > 1 else ""
    raise UserError(f"The processes read different weights from {source}: {described[0]}, {described[1]}{more}. Give "
                    "every process the same files: one folder all hosts share, or copies of the very folder process "
                    "0 reads (`python -m fer_jax.summary --checkpoint=PATH` prints a copy's params_sha256).")


def _split_in_words(identity: dict) -> str:
  """"prepared as synthetic/tiny/1.0.0, 280 records (280 used), labels 3f2a9c…": a split's identity in words."""
  return (f"prepared as {identity.get('prepared')}, {identity.get('records')} records ({identity.get('used')} used), "
          f"labels {str(identity.get('labels_sha256'))[:12]}…")


def config_differences(configs: list[dict]) -> str:
  """"key: value on process 0, other value on process i" for the first keys (flattened) whose values differ."""
  differences = []
  for key in sorted(set().union(*configs)):
    values = [json.dumps(config[key]) if key in config else "no such key" for config in configs]
    others = [index for index, value in enumerate(values) if value != values[0]]
    if others:
      more = f" ({len(others)} processes differ)" if len(others) > 1 else ""
      differences.append(f"{key}: {_short(values[0])} on process 0, {_short(values[others[0]])} on process "
                         f"{others[0]}{more}")
  return errors.first(differences, 3, "; ")


def _short(text: str, limit: int = 60) -> str:
  return text if len(text) <= limit else text[:limit - 1] + "…"


SHARED_CHECK_PREFIX = ".fer_jax_shared_check_"
TOKEN_WAIT_S = 5  # how long a process looks for process 0's file: a network file system may show it late
_exchanges = itertools.count()


def raise_process_zeros_error(message: str) -> None:
  """Raises process 0's user error `message` ("" for none; the other processes give "") on every process together:
  the others would go on into the run and lose process 0 in their first collective."""
  if jax.process_count() > 1:
    _together(process_zeros_error_check, message, _gather_strings)
  elif message:
    raise UserError(message)


def process_zeros_error_check(message: str, gather) -> None:
  """raise_process_zeros_error on one process; `gather(name, text)` returns every process's text for `name`."""
  if zero := gather("process 0's error", message)[0]:
    raise UserError(zero)


@contextlib.contextmanager
def errors_together():
  """A block of per-host set-up (files, prepared data, host memory) that one process may fail alone: on several
  processes every process leaves it together, raising the first failing process's error (a UserError with its
  message on the others; an unexpected exception is raised as it is where it happened). Before, that
  process exited at once (status 2) while the others went on into the next barrier or collective, waited out JAX's
  100 s heartbeat timeout and exited 75 ("another process stopped or died"), which launchers take for a preemption.
  The block must hold no collective or barrier a failing process could skip (one at its very start is fine)."""
  if jax.process_count() == 1:
    yield
    return
  message, unexpected = "", None
  try:
    yield
  except UserError as error:
    message = str(error) or type(error).__name__
  except Exception as error:  # pylint: disable=broad-except  # an OSError or a bug: the others must not wait for it
    message, unexpected = f"{type(error).__name__}: {error}", error
  try:
    _together(any_process_error_check, message, _gather_strings)
  except UserError:
    if unexpected is not None:
      raise unexpected  # its own traceback on the process that met it
    raise


def any_process_error_check(message: str, gather) -> None:
  """errors_together on one process: raises the first process's non-empty `message` ("process I: …" for I > 0)."""
  failed = [(index, text) for index, text in enumerate(gather("set-up errors", message)) if text]
  if failed:
    index, text = failed[0]
    raise UserError(text if index == 0 else f"process {index}: {text}")


def skipped_alike(absence: str, what: str) -> str:
  """`absence` (why this process skips `what`, "" where it does not), which must be empty on every process or on
  none: a process skipping an evaluator the others run would leave them waiting in its evaluations."""
  if jax.process_count() == 1:
    return absence
  _together(absences_check, absence, what, _gather_strings)
  return absence


def absences_check(absence: str, what: str, gather) -> None:
  absences = gather("absences", absence)
  if len({bool(text) for text in absences}) > 1:
    lacking = [index for index, text in enumerate(absences) if text]
    raise UserError(f"{what}: process {lacking[0]} skips it ({absences[lacking[0]]}), process "
                    f"{absences.index('')} does not: prepare the same data set on every host.")


def check_shared_workdir(workdir: str) -> None:
  """Stops every process unless each one's --workdir is the folder process 0's is (the path may be spelled
  differently per host): process 0 creates it and writes a file with a random name there, then every process
  looks for that file; the file is removed once every process has looked. Before, processes given different
  folders (or each a local disk) trained to the end and failed at the next resume; a file given as workdir
  was trained past. Exchanges through the coordination service, no device collective."""
  if jax.process_count() > 1:
    _together(shared_workdir_check, workdir, jax.process_index(), _gather_strings)


def shared_workdir_check(workdir: str, index: int, gather) -> None:
  """check_shared_workdir as process `index`; `gather(name, text)` returns every process's text for `name`."""
  problem, token_path = _workdir_problem(workdir), None
  token = ""
  created = index == 0 and not os.path.exists(workdir)
  if index == 0 and not problem:
    token = secrets.token_hex(16)
    token_path = os.path.join(workdir, SHARED_CHECK_PREFIX + token)
    try:
      os.makedirs(workdir, exist_ok=True)
      with open(token_path, "w") as f:
        f.write(token)
    except OSError as error:
      problem, token, token_path = f"--workdir={workdir} cannot be written ({error.strerror})", "", None
  zero = json.loads(gather("workdir token", json.dumps([token, workdir, socket.gethostname()]))[0])
  if index and not problem and zero[0]:
    problem = _missing_token(workdir, zero)
  problems = [json.loads(text) for text in gather("workdir checked", json.dumps(problem))]
  if token_path:  # every process has looked
    try:
      os.remove(token_path)
      if created:  # made for the check alone: train.training_lock makes it again (and removes it if left empty)
        os.rmdir(workdir)
    except OSError:
      pass
  failed = [(number, text) for number, text in enumerate(problems) if text]
  if failed:
    raise UserError("; ".join(f"process {number}: {text}" for number, text in failed) +
                    ". Start every process with --workdir set to one folder shared by all hosts (a network file "
                    "system or mounted bucket; the path may differ per host).")


def _workdir_problem(workdir: str) -> str:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    return f"--workdir={workdir} is a file, not a folder"
  return ""


def _missing_token(workdir: str, zero: list) -> str:
  """"" where process 0's token file is in `workdir` here (looked for up to TOKEN_WAIT_S), else the message."""
  token, zero_workdir, zero_host = zero
  path = os.path.join(workdir, SHARED_CHECK_PREFIX + token)
  deadline = time.monotonic() + TOKEN_WAIT_S
  while True:
    try:
      with open(path) as f:
        if f.read() == token:
          return ""
    except OSError:
      pass
    if time.monotonic() > deadline:
      return (f"--workdir={workdir} is not the folder process 0 sees ({zero_workdir} on {zero_host}): every "
              "process needs the same shared folder")
    time.sleep(0.5)


def _gather_strings(name: str, text: str) -> list[str]:
  """Every process's `text`, through the coordination service's key-value store: each name once per run."""
  client = coordination_client()
  key = f"fer_jax/{name.replace(' ', '_')}/{next(_exchanges)}"
  client.key_value_set(f"{key}/{jax.process_index()}", text)
  return [client.blocking_key_value_get(f"{key}/{number}", COORDINATOR_TIMEOUT_S * 1000)
          for number in range(jax.process_count())]


def coordinator_host() -> str | None:
  """The host the processes reach process 0's coordinator at (given, or found by JAX in a cluster it detects); None
  where JAX no longer keeps it there."""
  address = getattr(jax_distributed.global_state, "coordinator_address", None)
  return host_and_port(address)[0] if isinstance(address, str) and HOST_PORT.fullmatch(address) else None


def coordination_client():
  """jax.distributed's client of the coordination service: its key-value store exchanges text between processes
  without a device collective."""
  return ocp.multihost.get_jax_distributed_client()
