"""A TCP connection from every process of a run to process 0, held while the command runs (`held`). A process
that dies (SIGKILL, the OOM killer, a crash in native code) closes its end without the goodbye a process sends on
leaving, and the processes still running learn it at once (a lost host: once keepalive probes go unanswered). Without it they learn it from a
collective, which may never fail: a device waiting on another device of its own process does not see the dead
process's connections close (gloo on CPUs, in 5 kills of 15 during a save; NCCL on GPUs likewise) and waits until
JAX's 100 s heartbeat timeout aborts the process."""

import contextlib
import socket
import threading
from typing import Callable

from absl import logging

PORT_KEY = "fer_jax/lifeline_port"  # process 0's listening port, in the coordination service's key-value store
GOODBYE = b"goodbye"
# Probes of a silent connection (Linux): a host lost without a word is noticed within a minute.
KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


@contextlib.contextmanager
def held(client, index: int, count: int, coordinator_host: str, on_lost: Callable[[str], None],
         timeout_s: float):
  """The block, process `index` of `count` holding its lifeline: process 0 listens on a free port (published
  through `client`, the coordination service's) for the others, each of which connects to it at
  `coordinator_host`. `on_lost(what)` is called from a watching thread when a connection ends without the other
  side's goodbye while the block runs (what: "process 0 ended without leaving the run (…)", "a process …" on
  process 0). A lifeline that cannot be made within `timeout_s` is a warning, not an error: the run goes on as it
  would without one."""
  lifeline = _Lifeline(on_lost)
  if index == 0:
    lifeline.serve(client, count - 1, timeout_s)
  else:
    lifeline.connect(client, coordinator_host, timeout_s)
  try:
    yield
  finally:
    lifeline.leave()


class _Lifeline:
  """One process's connections: to every other process on process 0, to process 0 on the others. Nothing flows on
  them but each side's goodbye: data left unread by a process that exits would reset the connection, and the other
  side could lose the goodbye before it."""

  def __init__(self, on_lost: Callable[[str], None]):
    self._on_lost = on_lost
    self._leaving = False
    self._connections: list[socket.socket] = []
    self._server: socket.socket | None = None
    self._lock = threading.Lock()

  def serve(self, client, peers: int, timeout_s: float) -> None:
    if socket.has_dualstack_ipv6():
      self._server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
      self._server = socket.create_server(("", 0))
    client.key_value_set(PORT_KEY, str(self._server.getsockname()[1]))
    threading.Thread(target=self._accept, args=(peers, timeout_s), name="lifeline", daemon=True).start()

  def _accept(self, peers: int, timeout_s: float) -> None:
    self._server.settimeout(timeout_s)
    for accepted in range(peers):
      try:
        connection, _ = self._server.accept()
      except OSError as error:
        if not self._leaving:
          logging.warning("%d of the %d other processes did not connect to process 0's lifeline (%s): one that dies "
                          "leaves the others waiting for JAX's heartbeat timeout.", peers - accepted, peers, error)
        return
      self._watch(connection, "a process")

  def connect(self, client, host: str, timeout_s: float) -> None:
    try:
      port = int(client.blocking_key_value_get(PORT_KEY, int(timeout_s * 1000)))
      connection = socket.create_connection((host, port), timeout=timeout_s)
      connection.settimeout(None)
    except Exception as error:  # pylint: disable=broad-except  # a firewall, a timeout: the run goes on without it
      logging.warning("No lifeline to process 0 at %s (%s): if process 0 dies, this process waits for JAX's heartbeat "
                      "timeout.", host, error)
      return
    self._watch(connection, "process 0")

  def _watch(self, connection: socket.socket, peer: str) -> None:
    for name, value in KEEPALIVE:
      if hasattr(socket, name):
        connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    with self._lock:
      self._connections.append(connection)
      if self._leaving:  # accepted after this process left
        _say_goodbye(connection)
    threading.Thread(target=self._read_to_end, args=(connection, peer), name="lifeline", daemon=True).start()

  def _read_to_end(self, connection: socket.socket, peer: str) -> None:
    """Reads to the other side's end; calls on_lost if it sent no goodbye and this process is not leaving."""
    received, error = b"", None
    try:
      while chunk := connection.recv(64):
        received += chunk
    except OSError as raised:  # reset, or keepalive probes unanswered
      error = raised
    if GOODBYE not in received and not self._leaving:
      self._on_lost(f"{peer} ended without leaving the run ({error or 'its connection closed'})")

  def leave(self) -> None:
    """Says goodbye on every connection, those still waiting to be accepted included (a process that exits with
    them unaccepted resets them); the watching threads read on to the other side's end, unheard."""
    with self._lock:
      self._leaving = True
      if self._server is not None:
        self._server.setblocking(False)
        while True:
          try:
            self._connections.append(self._server.accept()[0])
          except OSError:  # none left (BlockingIOError), or closed
            break
      for connection in self._connections:
        _say_goodbye(connection)


def _say_goodbye(connection: socket.socket) -> None:
  try:
    connection.sendall(GOODBYE)
    connection.shutdown(socket.SHUT_WR)
  except OSError:  # the other side ended first
    pass
