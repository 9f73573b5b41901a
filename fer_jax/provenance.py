"""Which code and software produced a result, recorded with checkpoints (their meta record) and reports
(eval_results.json), so that a figure can be traced to the commit and the releases that made it."""

import datetime
import functools
import importlib.metadata
import os
import platform
import subprocess

import jax

PACKAGES = ("fer_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout's root, where fer_jax is one


@functools.cache
def software() -> dict:
  """fer_jax's version and, where it runs from a git checkout, its commit and whether tracked files differ from it;
  Python's and the named packages' versions."""
  return {**{name: _version(name) for name in PACKAGES}, **_git(), "python": platform.python_version()}


def record() -> dict:
  """`software()` with the date (UTC) and the devices: a report's."""
  device = jax.devices()[0]
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **software(),
          "platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
          "processes": jax.process_count()}


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git() -> dict:
  """{"git_commit", "git_modified"} of the checkout fer_jax runs from; None each where it is not one (an installed
  wheel) or git cannot tell."""
  commit = modified = None
  if os.path.exists(os.path.join(ROOT, ".git")):
    try:
      commit = _run_git("rev-parse", "HEAD")
      modified = bool(_run_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):  # no git, or one that hangs
      commit = modified = None
  return {"git_commit": commit, "git_modified": modified}


def _run_git(*args: str) -> str | None:
  """git's output in the checkout; `git status` takes no lock there (GIT_OPTIONAL_LOCKS=0), which a command of the
  user's beside the run would find held."""
  result = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=10, check=False,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
  return result.stdout.strip() if result.returncode == 0 else None
