"""A TCP connection from every process of a run to process 0, held while the command runs (`held`). A process
that dies (SIGKILL, the OOM killer, a crash in native code) closes its end without the goodbye a process sends on
leaving, and the processes still running learn it at once (of a lost host: once keepalive probes go unanswered).
Without it they learn it from a collective, which may never fail: a device waiting on another device of its own
process does not see the dead process's connections close (gloo on CPUs, in 5 kills of 15 during a save; NCCL on
GPUs likewise) and waits until JAX's 100 s heartbeat timeout aborts the process."""

import contextlib
import secrets
import socket
import threading
from typing import Callable

from absl import logging

ADDRESS_KEY = "fer_jax/lifeline"  # process 0's port and the run's token, in the coordination service's key-value store
GOODBYE = b"goodbye"
# Probes of a silent connection (Linux): a host lost without a word is noticed within a minute.
KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


@contextlib.contextmanager
def held(client, index: int, coordinator_host: str, on_lost: Callable[[str], None], timeout_s: float):
  """The block, process `index` holding its lifeline: process 0 listens on a free port, published with a token of
  the run through `client` (the coordination service's), and the others connect to it at `coordinator_host`, each
  first sending the token and its index (a connection without them, a port scanner's, is no process of the run).
  `on_lost(what)` is called from a watching thread when a connection ends without the other side's goodbye while
  the block runs (what: "process 1 ended without leaving the run (…)"). A lifeline that cannot be made within
  `timeout_s` is a warning, not an error: the run goes on as it would without one."""
  lifeline = _Lifeline(on_lost)
  if index == 0:
    lifeline.serve(client)
  else:
    lifeline.connect(client, index, coordinator_host, timeout_s)
  try:
    yield
  finally:
    lifeline.leave()


class _Lifeline:
  """One process's connections: to every other process on process 0, to process 0 on the others. Nothing else flows
  on them but each side's goodbye, and every byte is read as it comes: data left unread by a process that exits
  resets the connection, and the other side may lose the goodbye before it."""

  def __init__(self, on_lost: Callable[[str], None]):
    self._on_lost = on_lost
    self._leaving = False
    self._connections: list[socket.socket] = []
    self._server: socket.socket | None = None
    self._token = secrets.token_hex(8).encode()
    self._lock = threading.Lock()

  def serve(self, client) -> None:
    if socket.has_dualstack_ipv6():
      self._server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
      self._server = socket.create_server(("", 0))
    client.key_value_set(ADDRESS_KEY, f"{self._server.getsockname()[1]} {self._token.decode()}")
    threading.Thread(target=self._accept, name="lifeline", daemon=True).start()

  def _accept(self) -> None:
    self._server.settimeout(1)
    while not self._leaving:
      try:
        connection, _ = self._server.accept()
      except TimeoutError:
        continue
      except OSError:  # closed
        return
      self._watch(connection, peer=None)

  def connect(self, client, index: int, host: str, timeout_s: float) -> None:
    try:
      port, self._token = client.blocking_key_value_get(ADDRESS_KEY, int(timeout_s * 1000)).encode().split()
      connection = socket.create_connection((host, int(port)), timeout=timeout_s)
      connection.settimeout(None)
      connection.sendall(b"%s %d\n" % (self._token, index))
    except Exception as error:  # pylint: disable=broad-except  # a firewall, a timeout: the run goes on without it
      logging.warning("No lifeline to process 0 at %s (%s): if process 0 dies, this process waits for JAX's heartbeat "
                      "timeout.", host, error)
      return
    self._watch(connection, peer="process 0")

  def _watch(self, connection: socket.socket, peer: str | None) -> None:
    for name, value in KEEPALIVE:
      if hasattr(socket, name):
        connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    with self._lock:
      self._connections.append(connection)
      if self._leaving:  # accepted after this process left
        _say_goodbye(connection)
    threading.Thread(target=self._read_to_end, args=(connection, peer), name="lifeline", daemon=True).start()

  def _read_to_end(self, connection: socket.socket, peer: str | None) -> None:
    """Reads to the other side's end; calls on_lost if it sent no goodbye and this process is not leaving. `peer`
    None: the other side names itself first (on process 0), or is no process of the run."""
    received, error = b"", None
    try:
      while chunk := connection.recv(64):
        received += chunk
    except OSError as raised:  # reset, or keepalive probes unanswered
      error = raised
    if peer is None:
      token, _, index = received.partition(b"\n")[0].partition(b" ")
      if token != self._token or not index.isdigit():
        return
      peer = f"process {int(index)}"
    if GOODBYE not in received and not self._leaving:
      self._on_lost(f"{peer} ended without leaving the run ({error or 'its connection closed'})")

  def leave(self) -> None:
    """Says goodbye on every connection, those still waiting to be accepted included (a process that exits with
    them unaccepted resets them; what they sent already is read first); the watching threads read on to the other
    side's end, unheard."""
    with self._lock:
      self._leaving = True
      if self._server is not None:
        self._server.setblocking(False)
        while True:
          try:
            waiting = self._server.accept()[0]
          except OSError:  # none left (BlockingIOError), or closed
            break
          try:
            waiting.recv(64, socket.MSG_DONTWAIT)
          except OSError:  # nothing sent yet
            pass
          self._connections.append(waiting)
      for connection in self._connections:
        _say_goodbye(connection)


def _say_goodbye(connection: socket.socket) -> None:
  try:
    connection.sendall(GOODBYE)
    connection.shutdown(socket.SHUT_WR)
  except OSError:  # the other side ended first
    pass
