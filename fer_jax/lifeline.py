"""A TCP connection from every process of a run to process 0, held while the command runs (`held`). A process
that dies (SIGKILL, the OOM killer, a crash in native code) closes its end without the farewell a process sends on
leaving, and process 0 learns it at once, or the others if process 0 died; process 0 then ends, and so the others
learn it (of a lost host: once keepalive probes go unanswered). Without it they learn it from a collective, which
may never fail: a device waiting on another device of its own process does not see the dead process's connections
close (gloo on CPUs, in 5 kills of 15 during a save; NCCL on GPUs likewise) and waits until JAX's 100 s heartbeat
timeout aborts the process.

On a connection, in order: the other process's token of the run and index (to process 0, which ignores a
connection without them: a port scanner's), WELCOME (from process 0), then either side's farewell, or process 0's
LOST line, which names the lost process to the others."""

import contextlib
import secrets
import socket
import threading
from typing import Callable

from absl import logging

ADDRESS_KEY = "fer_jax/lifeline"  # process 0's port and the run's token, in the coordination service's key-value store
WELCOME = b"welcome\n"
GOODBYE = b"goodbye\n"  # the farewell of a process leaving the block by returning or by sys.exit
FAILED = b"failed\n"  # that of a process leaving it by an exception, which the others may be raising too
GRACE_S = 5  # how long a process given FAILED waits to leave on its own error before ending as a lost one
CONNECT_TIMEOUT_S = 30
# Probes of a silent connection (Linux): a lost host is noticed after 2 minutes, a network partition JAX's own
# heartbeat (100 s) outlives does not end the run.
KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6))
LOST = b"lost "  # process 0 to the others before it ends on a loss: LOST + what + b"\n"
LINE_LIMIT = 64  # bytes: a token and index, or a welcome, is shorter
TAIL_LIMIT = 512  # bytes: what is kept of a connection's end


@contextlib.contextmanager
def held(client, index: int, coordinator_host: str | None, on_lost: Callable[[str], None],
         timeout_s: float):
  """The block, process `index` holding its lifeline: process 0 listens on a free port, published with a token of
  the run through `client` (the coordination service's, whose published address the others wait for up to
  `timeout_s`), and the others connect to it at `coordinator_host`. `on_lost(what)` is called once, from a watching
  thread, when a connection ends without a farewell while the block runs ("process 1 ended without leaving the run
  (…)"), or with FAILED and the block still runs GRACE_S later ("process 1 stopped with an error (see its log)"). A
  lifeline that cannot be made is a warning, not an error: the run goes on as it would without one."""
  lifeline = _Lifeline(on_lost)
  if index == 0:
    lifeline.serve(client)
  else:
    lifeline.connect(client, index, coordinator_host, timeout_s)
  farewell = GOODBYE
  try:
    yield
  except Exception:
    farewell = FAILED
    raise
  finally:
    lifeline.leave(farewell)


class _Lifeline:
  """One process's connections: to every other process on process 0, to process 0 on the others. Each is read to
  its end as data comes (data left unread by a process that exits resets the connection, and the other side may
  lose what was sent before)."""

  def __init__(self, on_lost: Callable[[str], None]):
    self._on_lost = on_lost
    self._left = threading.Event()
    self._farewell = GOODBYE
    self._connections: list[socket.socket] = []
    self._server: socket.socket | None = None
    self._token = secrets.token_hex(8).encode()
    self._lock = threading.Lock()
    self._lost_once = threading.Lock()

  def serve(self, client) -> None:
    try:
      dual = socket.has_dualstack_ipv6()
      server = socket.create_server(("", 0), family=socket.AF_INET6 if dual else socket.AF_INET, dualstack_ipv6=dual)
      client.key_value_set(ADDRESS_KEY, f"{server.getsockname()[1]} {self._token.decode()}")
      server.settimeout(1)  # the accepting thread looks whether this process left every second
    except Exception as error:  # pylint: disable=broad-except  # the run goes on without it
      logging.warning("No lifeline on process 0 (%s): a process that dies leaves the others waiting for JAX's "
                      "heartbeat timeout.", error)
      return
    self._server = server
    threading.Thread(target=self._accept, name="lifeline", daemon=True).start()

  def _accept(self) -> None:
    while not self._left.is_set():
      try:
        connection, _ = self._server.accept()
      except TimeoutError:
        continue
      except OSError:  # closed as this process left
        return
      threading.Thread(target=self._greet, args=(connection,), name="lifeline", daemon=True).start()

  def _greet(self, connection: socket.socket) -> None:
    """Process 0: a process of the run names itself with the token, is welcomed and watched; others are closed."""
    connection.settimeout(CONNECT_TIMEOUT_S)
    line, rest = _read_line(connection)
    token, _, index = line.rstrip(b"\n").partition(b" ")
    if token != self._token or not index.isdigit():
      connection.close()
      return
    connection.settimeout(None)
    self._watch(connection, f"process {int(index)}", rest, greeting=WELCOME)

  def connect(self, client, index: int, host: str | None, timeout_s: float) -> None:
    try:
      if host is None:
        raise RuntimeError("JAX keeps no coordinator address where fer_jax looks for it")
      port, self._token = client.blocking_key_value_get(ADDRESS_KEY, int(timeout_s * 1000)).encode().split()
      connection = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
      connection.sendall(b"%s %d\n" % (self._token, index))
      welcome, rest = _read_line(connection)
      if welcome != WELCOME:  # a proxy that accepted for a port it cannot reach, and closed
        raise ConnectionError(f"no welcome from port {int(port)}, but {welcome[:20]!r}")
      connection.settimeout(None)
    except Exception as error:  # pylint: disable=broad-except  # a firewall, a timeout: the run goes on without it
      logging.warning("No lifeline to process 0 at %s (%s): if process 0 dies, this process waits for JAX's heartbeat "
                      "timeout.", host, error)
      return
    self._watch(connection, "process 0", rest)

  def _watch(self, connection: socket.socket, peer: str, received: bytes, greeting: bytes = b"") -> None:
    for name, value in KEEPALIVE:
      if hasattr(socket, name):
        connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    with self._lock:
      self._connections.append(connection)
      _send(connection, greeting + (self._farewell if self._left.is_set() else b""), last=self._left.is_set())
    threading.Thread(target=self._read_to_end, args=(connection, peer, received), name="lifeline",
                     daemon=True).start()

  def _read_to_end(self, connection: socket.socket, peer: str, received: bytes) -> None:
    """Reads to the other side's end; unless this process left, a farewell-less end is a loss, and so is FAILED if
    this process has not left GRACE_S later."""
    error = None
    try:
      while chunk := connection.recv(TAIL_LIMIT):
        received = (received + chunk)[-TAIL_LIMIT:]
    except OSError as raised:  # reset, or keepalive probes unanswered
      error = raised
    if self._left.is_set() or received.endswith(GOODBYE):
      return
    last_line = received.rstrip(b"\n").rpartition(b"\n")[2]
    if last_line.startswith(LOST):
      self._lost(f"{last_line[len(LOST):].decode(errors='replace')}, seen by {peer}")
    elif not received.endswith(FAILED):
      self._lost(f"{peer} ended without leaving the run ({error or 'its connection closed'})")
    elif not self._left.wait(GRACE_S):
      self._lost(f"{peer} stopped with an error (see its log)")

  def _lost(self, what: str) -> None:
    """on_lost(what), once; process 0 first tells the others what it lost."""
    if not self._lost_once.acquire(blocking=False):
      return
    if self._server is not None:
      with self._lock:
        for connection in self._connections:
          _send(connection, LOST + what.encode() + b"\n", last=True)
    self._on_lost(what)

  def leave(self, farewell: bytes) -> None:
    """Sends `farewell` on every connection (one welcomed later gets it with its welcome), and closes process 0's
    listening socket: a process whose connection is not welcomed goes on without a lifeline, warned. The watching
    threads read on to the other side's end, unheard."""
    with self._lock:
      self._farewell = farewell
      self._left.set()
      for connection in self._connections:
        _send(connection, farewell, last=True)
      if self._server is not None:
        self._server.close()


def _read_line(connection: socket.socket) -> tuple[bytes, bytes]:
  """The first line the other side sends (with its newline; what came before the end if none within LINE_LIMIT
  bytes), and what followed it."""
  received = b""
  while b"\n" not in received and len(received) < LINE_LIMIT:
    try:
      chunk = connection.recv(LINE_LIMIT)
    except OSError:
      break
    if not chunk:
      break
    received += chunk
  line, newline, rest = received.partition(b"\n")
  return line + newline, rest


def _send(connection: socket.socket, data: bytes, last: bool) -> None:
  """`data`, then the end of this side's sending if `last`; nothing if the other side ended first."""
  try:
    connection.sendall(data)
    if last:
      connection.shutdown(socket.SHUT_WR)
  except OSError:
    pass
