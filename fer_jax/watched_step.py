"""Jitted steps that should compile once a run: each counts its XLA compilations and names what changed
when one compiles again (a recompilation costs a step's compile time, often minutes, every time it recurs)."""

import threading

from absl import logging
import jax

from fer_jax import errors

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring's event, once per XLA compilation
_calling = threading.local()  # the WatchedStep running in this thread, if any


def _count_compilation(event: str, duration: float, fun_name: str = "", **_) -> None:
  del duration
  step = getattr(_calling, "step", None)
  if event == COMPILE_EVENT and step is not None and fun_name == step.fun_name:
    step.compiles += 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def argument_types(args) -> dict[str, str]:
  """Each argument's type (weak types marked ~) and placement, by path: what a jitted function's
  compilations are keyed on."""
  return {jax.tree_util.keystr(path): f"{jax.typeof(leaf)} on {getattr(leaf, 'sharding', 'the host')}"
          for path, leaf in jax.tree_util.tree_leaves_with_path(args)}


class WatchedStep:
  """A jitted step meant to compile once per run: counts its calls and its XLA compilations (jax.monitoring's
  compile events during its own calls) and logs a warning naming it and the arguments whose type or
  placement changed whenever a call compiles it again."""

  def __init__(self, name: str, jitted):
    self.name, self.jitted, self.compiles, self.calls = name, jitted, 0, 0
    self.fun_name = f"jit({jitted.__name__})"
    self._first_types = None

  def __call__(self, *args):
    before, outer = self.compiles, getattr(_calling, "step", None)
    _calling.step = self
    try:
      outputs = self.jitted(*args)
    finally:
      _calling.step = outer
    self.calls += 1
    if self.compiles > before:
      self._compiled(args)
    return outputs

  def _compiled(self, args) -> None:
    types = argument_types(args)
    if self._first_types is None:
      self._first_types = types
      return
    changed = [f"{path}: {self._first_types.get(path, 'absent')} → {now}" for path, now in types.items()
               if self._first_types.get(path) != now]
    logging.warning("%s compiled again (%d compilations this run); changed since its first compilation: %s",
                    self.name, self.compiles, errors.first(changed, 3, "; ") or "no argument's type or placement")
