"""fer_jax.lifeline between this test's process and a child process: a process that dies is seen at once by the
other, one that leaves is not taken for dead, and a lifeline that cannot be made is a warning."""

import queue
import select
import socket
import subprocess
import sys
import textwrap

from absl import logging
import pytest

from fer_jax import lifeline
from helpers import ROOT, free_port, killed_at_end


class OneKeyClient:
  """The coordination service's key-value store as lifeline.held uses it: the one key, set or given."""

  def __init__(self, port: int | None = None):
    self.values = {} if port is None else {lifeline.PORT_KEY: str(port)}

  def key_value_set(self, key: str, value: str) -> None:
    self.values[key] = value

  def blocking_key_value_get(self, key: str, timeout_ms: int) -> str:
    del timeout_ms
    return self.values[key]


# A process of the run holding its lifeline: process 0 prints the port it listens on, another says it joined; it
# leaves the run when its standard input closes.
CHILD = textwrap.dedent("""
  import sys
  from fer_jax import lifeline

  class Client:
    def key_value_set(self, key, value):
      print("port", value, flush=True)

    def blocking_key_value_get(self, key, timeout_ms):
      return sys.argv[2]

  index = int(sys.argv[1])
  with lifeline.held(Client(), index, 2, "localhost", lambda what: print("lost:", what, flush=True), 30):
    if index:
      print("joined", flush=True)
    sys.stdin.read()
""")


def _child(index: int, port: int = 0) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", CHILD, str(index), str(port)], cwd=ROOT, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)


def _port(zero: subprocess.Popen) -> int:
  line = zero.stdout.readline()
  assert line.startswith("port "), line
  return int(line.split()[1])


def _no_loss_within_a_second(losses: queue.Queue) -> None:
  with pytest.raises(queue.Empty):
    losses.get(timeout=1)


def test_process_0_sees_a_process_killed_at_once_and_a_process_leaving_as_leaving():
  losses = queue.Queue()
  client = OneKeyClient()
  with lifeline.held(client, 0, 3, "localhost", losses.put, 30):
    port = int(client.values[lifeline.PORT_KEY])
    with killed_at_end([_child(1, port), _child(2, port)]) as (leaving, killed):
      assert leaving.stdout.readline() == killed.stdout.readline() == "joined\n"
      leaving.stdin.close()
      assert leaving.wait(timeout=30) == 0 and leaving.stdout.read() == ""  # no "lost:"
      _no_loss_within_a_second(losses)
      killed.kill()
      assert losses.get(timeout=10).startswith("a process ended without leaving the run (")


def test_the_others_see_process_0_killed_at_once():
  losses = queue.Queue()
  with killed_at_end([_child(0)]) as (zero,):
    with lifeline.held(OneKeyClient(_port(zero)), 1, 2, "localhost", losses.put, 30):
      zero.kill()
      # "(its connection closed)", or "([Errno 104] Connection reset by peer)" if killed before it accepted this one
      assert losses.get(timeout=10).startswith("process 0 ended without leaving the run (")


def test_process_0_leaving_is_not_taken_for_its_death_nor_another_process_leaving_by_it():
  losses = queue.Queue()
  for leaves_first in ("process 0", "process 1"):
    with killed_at_end([_child(0)]) as (zero,):
      with lifeline.held(OneKeyClient(_port(zero)), 1, 2, "localhost", losses.put, 30):
        if leaves_first == "process 0":
          zero.stdin.close()
          assert zero.wait(timeout=30) == 0
          _no_loss_within_a_second(losses)
      if leaves_first == "process 1":
        assert select.select([zero.stdout], [], [], 1)[0] == []  # no "lost:" within a second
      zero.stdin.close()
      assert zero.wait(timeout=30) == 0 and zero.stdout.read() == "", leaves_first  # no "lost:"


def test_a_lifeline_that_cannot_be_made_is_a_warning_and_the_block_runs(monkeypatch):
  warnings, losses = [], queue.Queue()
  monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
  with lifeline.held(OneKeyClient(free_port()), 1, 2, "localhost", losses.put, 5):
    ran = True
  assert ran and losses.empty()
  assert len(warnings) == 1 and warnings[0].startswith("No lifeline to process 0 at localhost (")
  assert "if process 0 dies, this process waits for JAX's heartbeat timeout" in warnings[0]


def test_process_0_says_goodbye_to_a_connection_it_has_not_accepted_yet():
  """A process that exits with connections waiting to be accepted resets them: the others would take that for its
  death."""
  client = OneKeyClient()
  with lifeline.held(client, 0, 1, "localhost", pytest.fail, 30):  # waiting for no other process: none accepted
    waiting = socket.create_connection(("localhost", int(client.values[lifeline.PORT_KEY])), timeout=10)
  with waiting:
    assert waiting.recv(64) == lifeline.GOODBYE and waiting.recv(64) == b""
