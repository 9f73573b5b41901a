"""Several processes as one run: jax.distributed started from the command's flags, and every
process checked to run the same config before any work (`fer_jax.main --distributed`)."""

import hashlib
import json
import os
import re
import socket
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from fer_jax import config_lib
from fer_jax.errors import UserError

FLAGS = ("coordinator_address", "num_processes", "process_id")
COORDINATOR_TIMEOUT_S = 300  # as long as jax.distributed.initialize waits for the other processes


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


def _check_port(name: str, address: str | None) -> None:
  if address is not None and not re.fullmatch(r".+:\d+", address):
    raise UserError(f"{name}={address} needs a port: pass HOST:PORT of process 0 (e.g. {address}:1234).")


def start(coordinator_address, num_processes, process_id) -> None:
  """jax.distributed.initialize; CPU devices exchange collectives over gloo (only the CPU backend
  reads that setting). On Cloud TPU and Slurm JAX fills in the flags not given; elsewhere those
  missing are named."""
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address and process_id:
    flag = "--coordinator_address" if coordinator_address else "JAX_COORDINATOR_ADDRESS"
    wait_for_coordinator(address, flag, COORDINATOR_TIMEOUT_S)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  except ValueError as error:
    given = {"coordinator_address": coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
             "num_processes": num_processes, "process_id": process_id}
    missing = [f"--{name}" for name, value in given.items() if value is None]
    if not missing:
      raise
    raise UserError(f"--distributed could not start: {error} Outside a cluster JAX detects (Cloud TPU, Slurm), add "
                    f"{', '.join(missing)} (every process the same --coordinator_address=HOST:PORT of process 0 and "
                    "--num_processes, each its own --process_id).") from error


def wait_for_coordinator(address: str, flag: str, timeout_s: float) -> None:
  """Returns once something listens at process 0's HOST:PORT. Where the host does not resolve here, or nothing
  answers within `timeout_s`, a UserError names the address: JAX itself would abort the process after five
  minutes with a native stack trace that blames another task."""
  host, port = address.rsplit(":", 1)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
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
  return "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more keys" if len(differences) > 3 else "")


def _short(text: str, limit: int = 60) -> str:
  return text if len(text) <= limit else text[:limit - 1] + "…"
