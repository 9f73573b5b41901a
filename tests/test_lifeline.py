"""fer_jax.lifeline between this test's process and child processes: a process that dies is seen at once by the
other, one that leaves is not taken for dead, one that fails alone is seen after the grace a shared error needs, a
stranger's connection is ignored, and a lifeline that cannot be made is a warning."""

import contextlib
import queue
import select
import socket
import subprocess
import sys
import textwrap
import threading

from absl import logging
import pytest

from fer_jax import lifeline
from helpers import ROOT, free_port, killed_at_end


class OneKeyClient:
  """The coordination service's key-value store as lifeline.held uses it: its one key, set by process 0 or given."""

  def __init__(self, address: str | None = None):
    self.values = {} if address is None else {lifeline.ADDRESS_KEY: address}

  def key_value_set(self, key: str, value: str) -> None:
    self.values[key] = value

  def blocking_key_value_get(self, key: str, timeout_ms: int) -> str:
    del timeout_ms
    return self.values[key]


# A process of the run holding its lifeline: process 0 prints the port and token it publishes, another says it
# joined; it leaves the run when its standard input closes, by an exception if it read "fail".
CHILD = textwrap.dedent("""
  import sys
  from fer_jax import lifeline

  class Client:
    def key_value_set(self, key, value):
      print(value, flush=True)

    def blocking_key_value_get(self, key, timeout_ms):
      return sys.argv[2]

  index = int(sys.argv[1])
  with lifeline.held(Client(), index, "localhost", lambda what: print("lost:", what, flush=True), 30):
    if index:
      print("joined", flush=True)
    if sys.stdin.read() == "fail":
      raise RuntimeError("this process alone")
""")


def _child(index: int, address: str = "") -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", CHILD, str(index), address], cwd=ROOT, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)


def _address(zero: subprocess.Popen) -> str:
  """What process 0 published: 'PORT TOKEN'."""
  return zero.stdout.readline().strip()


def _no_loss_within_a_second(losses: queue.Queue) -> None:
  with pytest.raises(queue.Empty):
    losses.get(timeout=1)


def test_process_0_sees_a_process_killed_at_once_tells_the_others_and_sees_a_process_leaving_as_leaving():
  losses = queue.Queue()
  client = OneKeyClient()
  with lifeline.held(client, 0, "localhost", losses.put, 30):
    address = client.values[lifeline.ADDRESS_KEY]
    with killed_at_end([_child(1, address), _child(2, address), _child(3, address)]) as (leaving, killed, staying):
      assert leaving.stdout.readline() == killed.stdout.readline() == staying.stdout.readline() == "joined\n"
      leaving.stdin.close()
      assert leaving.wait(timeout=30) == 0 and leaving.stdout.read() == ""  # no "lost:"
      _no_loss_within_a_second(losses)
      killed.kill()
      lost = losses.get(timeout=10)
      assert lost.startswith("process 2 ended without leaving the run (")
      assert select.select([staying.stdout], [], [], 10)[0], "process 3 was not told"
      assert staying.stdout.readline() == f"lost: {lost}, seen by process 0\n"


def test_the_others_see_process_0_killed_at_once():
  losses = queue.Queue()
  with killed_at_end([_child(0)]) as (zero,):
    with lifeline.held(OneKeyClient(_address(zero)), 1, "localhost", losses.put, 30):
      zero.kill()
      # "(its connection closed)", or "([Errno 104] Connection reset by peer)" if killed before it accepted this one
      assert losses.get(timeout=10).startswith("process 0 ended without leaving the run (")


def test_process_0_leaving_is_not_taken_for_its_death_nor_another_process_leaving_by_it():
  losses = queue.Queue()
  for leaves_first in ("process 0", "process 1"):
    with killed_at_end([_child(0)]) as (zero,):
      with lifeline.held(OneKeyClient(_address(zero)), 1, "localhost", losses.put, 30):
        if leaves_first == "process 0":
          zero.stdin.close()
          assert zero.wait(timeout=30) == 0
          _no_loss_within_a_second(losses)
      if leaves_first == "process 1":
        assert select.select([zero.stdout], [], [], 1)[0] == []  # no "lost:" within a second
      zero.stdin.close()
      assert zero.wait(timeout=30) == 0 and zero.stdout.read() == "", leaves_first  # no "lost:"


def test_a_process_failing_alone_is_seen_after_the_grace_and_one_failing_with_this_one_is_not(monkeypatch):
  """An error raised on every process at once (errors_together) ends each by its own message: the grace lets it."""
  monkeypatch.setattr(lifeline, "GRACE_S", 1)
  for alone in (True, False):
    losses = queue.Queue()
    client = OneKeyClient()
    with pytest.raises(RuntimeError, match="this one too") if not alone else contextlib.nullcontext():
      with lifeline.held(client, 0, "localhost", losses.put, 30):
        with killed_at_end([_child(1, client.values[lifeline.ADDRESS_KEY])]) as (failing,):
          assert failing.stdout.readline() == "joined\n"
          failing.communicate("fail", timeout=30)
          assert failing.returncode == 1
        if alone:
          assert losses.get(timeout=10) == "process 1 stopped with an error (see its log)"
        else:
          raise RuntimeError("this one too")
    _no_loss_within_a_second(losses)


def test_a_connection_without_the_runs_token_is_no_process_of_the_run():
  """A port scanner's connection, or one from an earlier run's process, that closes."""
  losses = queue.Queue()
  client = OneKeyClient()
  with lifeline.held(client, 0, "localhost", losses.put, 30):
    port, token = client.values[lifeline.ADDRESS_KEY].split()
    for sent in (b"", b"GET / HTTP/1.0\r\n\r\n", b"%s 1\n" % token[::-1].encode()):
      with socket.create_connection(("localhost", int(port)), timeout=10) as stranger:
        stranger.sendall(sent)
    _no_loss_within_a_second(losses)
    with socket.create_connection(("localhost", int(port)), timeout=10) as process_1:
      process_1.sendall(b"%s 1\n" % token.encode())
      assert process_1.recv(64) == lifeline.WELCOME
    assert losses.get(timeout=10) == "process 1 ended without leaving the run (its connection closed)"


def test_a_process_connecting_as_process_0_leaves_does_not_take_it_for_dead():
  """Welcomed with a goodbye, or reset unwelcomed (process 0 closed its port with the connection unaccepted): a
  warning then, not a loss."""
  client, losses, joined = OneKeyClient(), queue.Queue(), threading.Event()

  def process_1():
    with lifeline.held(OneKeyClient(client.values[lifeline.ADDRESS_KEY]), 1, "localhost", losses.put, 30):
      joined.set()

  with lifeline.held(client, 0, "localhost", losses.put, 30):
    joining = threading.Thread(target=process_1)
    joining.start()
  joining.join(timeout=30)
  assert joined.is_set()
  _no_loss_within_a_second(losses)


@pytest.mark.parametrize("process_0", ["nothing listening", "a proxy closing at once"])
def test_a_lifeline_that_cannot_be_made_is_a_warning_and_the_block_runs(monkeypatch, process_0):
  """A transparent proxy (a sidecar) accepts a connection for a port it cannot reach, then closes it: no welcome."""
  warnings, losses = [], queue.Queue()
  monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
  with socket.create_server(("localhost", 0)) as proxy:
    port = free_port() if process_0 == "nothing listening" else proxy.getsockname()[1]
    closing = threading.Thread(target=lambda: proxy.accept()[0].close(), daemon=True)
    if process_0 != "nothing listening":
      closing.start()
    with lifeline.held(OneKeyClient(f"{port} token"), 1, "localhost", losses.put, 5):
      ran = True
  assert ran
  _no_loss_within_a_second(losses)
  assert len(warnings) == 1 and warnings[0].startswith("No lifeline to process 0 at localhost (")
  assert "if process 0 dies, this process waits for JAX's heartbeat timeout" in warnings[0]
