"""Ctrl-C while a command starts. `python -m fer_jax.COMMAND` imports JAX, Flax and TFDS and reads its flags for
seconds before its main runs, and its decoding workers import the command's module again before they run. A
KeyboardInterrupt raised then printed a traceback (one a worker), or, raised inside JAX's garbage-collection
callback, was printed as "Exception ignored" and lost: the command went on (a training to its end).

So, from the moment the package is imported: until the command's main runs (`cli.with_clean_errors` restores
Python's handler), Ctrl-C ends the command at once with one line and status 130, nothing being written yet; its
workers leave Ctrl-C to the command, which stops them."""

import os
import signal
import sys

LINE = "Interrupted (Ctrl-C) while the command was starting; nothing was written."
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def exit_at_once(signum, frame) -> None:
  """SIGINT's handler while a fer_jax command starts; in another program that imported fer_jax, Python's own."""
  main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if main_spec is None or not main_spec.name.startswith("fer_jax."):
    signal.default_int_handler(signum, frame)
  os.write(sys.stderr.fileno(), f"{LINE}\n".encode())
  os._exit(128 + signum)  # a handler that raised could see its exception lost as above


def handle_ctrl_c_from_the_start() -> None:
  """Called as the package is imported, where SIGINT has Python's handler (a background job's is ignored, and
  stays so): in a command that `python -m` starts (sys.argv[0] is "-m" while Python finds the module), and in a
  command's multiprocessing worker (started with --multiprocessing-fork, given the command's sys.argv)."""
  if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
    return
  if sys.argv[:1] == ["-m"]:
    signal.signal(signal.SIGINT, exit_at_once)
  elif "--multiprocessing-fork" in sys.orig_argv and sys.argv[:1] and _in_package(sys.argv[0]):
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _in_package(path: str) -> bool:
  return os.path.abspath(path).startswith(_PACKAGE + os.sep)


def raise_on_ctrl_c() -> None:
  """Python's KeyboardInterrupt again, once the command's main runs."""
  if signal.getsignal(signal.SIGINT) is exit_at_once:
    signal.signal(signal.SIGINT, signal.default_int_handler)
