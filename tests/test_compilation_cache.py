"""The training, evaluation and inference commands keep the XLA programs they compile on GPUs and TPUs for later
runs (fer_jax.mesh.keep_compilations), unless told where else or not to."""

import os
import subprocess
import sys

import jax
import pytest

from fer_jax import mesh as mesh_lib
from helpers import ROOT


@pytest.fixture
def unset_cache(monkeypatch):
  """This process as a user's on a GPU: no $JAX_COMPILATION_CACHE_DIR (the test session sets one), none in JAX's
  config."""
  before = jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size
  monkeypatch.delenv(mesh_lib.COMPILATION_CACHE_ENV)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  jax.config.update("jax_compilation_cache_dir", before[0])
  jax.config.update("jax_compilation_cache_max_size", before[1])


def test_the_cache_is_kept_in_the_users_cache_folder_under_a_size(unset_cache, monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  folder = str(tmp_path / "fer_jax" / "jax_compilation_cache")
  assert mesh_lib.keep_compilations() == folder and os.path.isdir(folder)
  assert jax.config.jax_compilation_cache_dir == folder
  assert jax.config.jax_compilation_cache_max_size == mesh_lib.COMPILATION_CACHE_BYTES


def test_nothing_is_kept_on_the_cpu_unless_asked(unset_cache, monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert mesh_lib.keep_compilations() is None and jax.config.jax_compilation_cache_dir is None
  assert not os.listdir(tmp_path)


def test_a_folder_that_cannot_be_made_leaves_compilations_unkept(unset_cache, monkeypatch, tmp_path):
  (tmp_path / "file").write_text("")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
  assert mesh_lib.keep_compilations() is None and jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("value", ["", "/elsewhere"])
def test_the_users_own_setting_is_kept(unset_cache, monkeypatch, value):
  monkeypatch.setenv(mesh_lib.COMPILATION_CACHE_ENV, value)
  assert mesh_lib.keep_compilations() is None and jax.config.jax_compilation_cache_dir is None


# A GPU's process, as far as keep_compilations can tell: JAX then compiles (for the CPU here) into the folder.
COMPILE = """
import jax, jax.numpy as jnp
from fer_jax import mesh
jax.default_backend = lambda: "gpu"
print(mesh.keep_compilations())
jax.jit(lambda x: jnp.tanh(x) @ x).lower(jnp.ones((64, 64))).compile()
"""


def test_jax_writes_the_compiled_program_into_the_kept_folder(tmp_path):
  env = {key: value for key, value in os.environ.items() if key != mesh_lib.COMPILATION_CACHE_ENV}
  env.update(XDG_CACHE_HOME=str(tmp_path), JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  result = subprocess.run([sys.executable, "-c", COMPILE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  folder = tmp_path / "fer_jax" / "jax_compilation_cache"
  assert result.stdout.strip() == str(folder)
  assert any(name.endswith("-cache") for name in os.listdir(folder)), os.listdir(folder)


# CPU processes run together, as far as mesh.keep_no_cpu_compilations can tell, with JAX_COMPILATION_CACHE_DIR
# set: nothing JAX compiles afterwards goes into the folder.
TOGETHER = """
import sys
from absl import logging
import jax, jax.numpy as jnp
from fer_jax import mesh
logging.set_verbosity(logging.INFO)
jax.process_count = lambda: int(sys.argv[1])
mesh.keep_no_cpu_compilations()
print(mesh.keep_compilations())
jax.jit(lambda x: jnp.tanh(x) @ x).lower(jnp.ones((64, 64))).compile()
"""


@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_processes_run_together_compile_afresh(tmp_path, processes):
  """With jaxlib 0.12.1 a resumed two-process CPU run hung in its first step, loading that step from the cache."""
  env = {**os.environ, mesh_lib.COMPILATION_CACHE_ENV: str(tmp_path), "JAX_PLATFORMS": "cpu",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  result = subprocess.run([sys.executable, "-c", TOGETHER, str(processes)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  kept = [name for name in os.listdir(tmp_path) if name.endswith("-cache")]
  if processes == 1:
    assert result.stdout.strip() == str(tmp_path) and kept
  else:
    assert result.stdout.strip() == "None" and not kept, kept
    assert "persistent compilation cache" in result.stderr
