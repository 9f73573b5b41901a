"""Shared test utilities (plain functions; the pytest fixtures are in conftest.py): the tiny
synthetic set and tiny run configs, configs as the CLI loads them, random model variables,
subprocess runs of the CLI and their error checks."""

import collections
import contextlib
import glob
import importlib.util
import itertools
import os
import re
import socket
import sys

import jax
import numpy as np
from fer_jax import checkpointing
from fer_jax import models
from fer_jax import watched_step
from fer_jax.data.builders import synthetic  # noqa: F401  (registers the builder)
import tensorflow_datasets as tfds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The folder of synthetic/tiny for this pytest session, under pytest's temporary folder: set by
# the session fixture in conftest.py, inherited by the subprocesses the tests start.
TINY_DATA_ENV = "FER_JAX_TEST_TFDS_DIR"


def tiny_data_dir() -> str:
  """synthetic/tiny (280 train / 70 test, 32×32), prepared on first use in this session's folder
  ($FER_JAX_TEST_TFDS_DIR); tests that need only the path ask for the `tiny_data_dir` fixture."""
  data_dir = os.environ.get(TINY_DATA_ENV)
  if not data_dir:
    raise RuntimeError(f"${TINY_DATA_ENV} is not set: run the tests through pytest (tests/conftest.py sets it)")
  builder = tfds.builder("synthetic/tiny", data_dir=data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(file_format="array_record")
  return data_dir


def distance(a, b) -> float:
  """The Euclidean distance between two trees of arrays of the same structure (parameters), in float64."""
  return float(np.sqrt(sum(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def tiny_run(config, size: int = 32, batch_size: int = 32, epochs: int = 1, per_class: int = 0):
  """Shrinks a `:synthetic` config to seconds of CPU work on synthetic/tiny (its first `per_class`
  training images of each class if given: 10 make epochs of 2 steps of 32). An epoch's last, short batch is dropped,
  so that a run compiles one train step (test_last_batch.py trains on it)."""
  config.dataset.update(name="synthetic/tiny", data_dir=tiny_data_dir(), drop_last=True)
  if per_class:
    config.dataset.max_per_class = per_class
  config.input.size = size
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  config.num_epochs = epochs
  config.log_every_steps = 4
  config.data_workers = 0
  return config


def short_dan_run():
  """configs/dan.py:synthetic shrunk by tiny_run to 2 epochs of 4 steps of 8 images (the first 5 of each class),
  evaluated in batches of 32: the one train step (train mode) that the training runs of test_train.py (in process
  and in the CLI subprocesses) and test_model_mode.py compile, once a session through the persistent compilation
  cache."""
  config = tiny_run(get_config("configs/dan.py:synthetic"), batch_size=8, epochs=2, per_class=5)
  config.eval_batch_size = 32
  return config


TINY_NET = "tiny_methods.tiny_net"  # tests/tiny_methods/tiny_net.py's config.model.name, with tests/ on the path


def short_tiny_net_run():
  """short_dan_run's config training TinyNet (tests/tiny_methods/tiny_net.py) instead of DAN: for the tests whose
  subject is the training loop (resuming, model modes, an epoch's last batch), not a model. Its steps compile in
  about a second and its checkpoints hold kilobytes, where DAN's hold 226 MiB (its parameters and Adam's moments)."""
  config = short_dan_run()
  config.model.name = TINY_NET
  return config


def load_script(path: str, name: str = ""):
  """The Python file at `path` (relative to the repository root) imported as a module."""
  module_spec = importlib.util.spec_from_file_location(name or os.path.basename(path)[:-3], os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def get_config(spec: str):
  """Loads "configs/<file>.py:<arg>" (relative to the repository root) as the CLI would."""
  path, _, arg = spec.partition(":")
  module = load_script(path, "config_module")
  return module.get_config(arg) if arg else module.get_config()


def small_config(spec: str, size: int):
  """get_config(spec) at `size`² input; APViT keeping 12 of its patch tokens, which a small input's feature map
  holds (its paper's 160 need 112²)."""
  config = get_config(spec)
  config.input.size = size
  if config.model.name == "apvit":
    config.model.app_keep = 12
  return config


def shipped_configs() -> list[str]:
  """Every "configs/<file>.py:<data set>,<option>=<value>…" a config file builds: each of its DATA_SETS with each
  combination of its OPTIONS' values (an option at its default, the first, left out), but those its get_config
  refuses (an option meant for other data sets)."""
  specs = []
  for path in sorted(glob.glob("configs/[!_]*.py", root_dir=ROOT)):
    module = load_script(path, "config_module")
    options = getattr(module, "OPTIONS", {})
    for data in module.DATA_SETS:
      for values in itertools.product(*options.values()):
        arg = ",".join([data, *(f"{key}={value}" for (key, choices), value in zip(options.items(), values)
                                if value != choices[0])])
        try:
          module.get_config(arg)
        except ValueError:
          if arg == data:  # only an option may be refused: a data set at its defaults must build
            raise
          continue
        specs.append(f"{path}:{arg}")
  return specs


def random_variables(config, seed=0):
  """Random values of the model's shapes (BatchNorm variances positive), without running init."""
  abstract = models.abstract_variables(models.build_model(config), config)
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree.flatten_with_path(abstract)
  values = [rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32) if str(path[-1].key) == "var"
            else rng.normal(0, 0.1, leaf.shape).astype(np.float32) for path, leaf in leaves]
  return jax.tree.unflatten(tree, values)


def run_pipeline(text: str, size: int, image, seed: int = 0):
  """One uint8 image (H, W, C) through a device pipeline string, as the jitted steps run it."""
  import jax
  import numpy as np
  from fer_jax.data import augment
  compiled = augment.parse(text, size=size)
  keys = augment.example_keys(seed, jax.numpy.arange(1))
  return np.asarray(jax.jit(compiled)(np.asarray(image)[None], keys)[0])


# As root, file permissions do not bind; commands that must meet them drop these capabilities.
_WITHOUT_FILE_PERMISSION_BYPASS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


# Runs argv[1:] with SIGINT's default action, as a terminal gives its commands, whatever the test inherits: a program
# started with SIGINT ignored (a background job's, CI's) keeps it so, and a shell cannot trap it. An exec, not Popen's
# preexec_fn, which forks this multithreaded (JAX) process.
AS_FROM_A_TERMINAL = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.argv[1], sys.argv[1:])"]


def cpu_devices_env(devices: int) -> dict:
  """This process's environment (and XLA flags) for a subprocess that runs JAX on `devices` CPU devices, with tests/
  on its Python path (config.model.name=TINY_NET)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
  path = os.pathsep.join(filter(None, (os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH"))))
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "PYTHONPATH": path}


def run_command(module: str, *args: str, timeout: int = 600, obey_permissions: bool = False, devices: int = 1):
  """`python -m <module> args…` from the repository root on `devices` CPU devices; the
  CompletedProcess (text).

  With `obey_permissions`, a root user runs it without the capabilities that bypass file
  permissions, so unreadable or read-only paths behave as for any other user."""
  import subprocess
  import sys
  command = [sys.executable, "-m", module, *args]
  if obey_permissions and os.geteuid() == 0:
    command = _WITHOUT_FILE_PERMISSION_BYPASS + command
  return subprocess.run(command, cwd=ROOT, env=cpu_devices_env(devices), capture_output=True, text=True,
                        timeout=timeout)


def train_on_eight_devices(spec: str, workdir, overrides: dict | None = None) -> dict:
  """`spec` shrunk by tiny_run (its own evaluation batch size kept) to one epoch of 2 steps on 70
  training images, then `overrides` (flattened keys, e.g. {"eval.tta": "flip"}), trained and
  evaluated into `workdir` by a subprocess with 8 CPU devices (tests/eight_devices_check.py); its
  report, checked to come from 8 devices and to count every test image of synthetic/tiny once
  (the last batch's padding masked)."""
  import json
  import subprocess
  import sys
  tiny_data_dir()  # built here, where pytest's fixtures run; the subprocess inherits its path
  result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "eight_devices_check.py"), spec, str(workdir),
                           json.dumps(overrides or {})], cwd=ROOT, env=cpu_devices_env(8), capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  output = json.loads(result.stdout.strip().splitlines()[-1])
  assert output["devices"] == 8 and output["eval_batch_size"] == get_config(spec).eval_batch_size
  assert output["report"]["num_examples"] == 70 and 0.0 <= output["report"]["accuracy"] <= 1.0
  return output["report"]


def assert_user_error(result, *fragments: str, foreign_traceback: str = "") -> None:
  """A clean user error: exit status 2, an `error:` line holding every fragment, no traceback
  (but those ending in `foreign_traceback`, printed by a library's own threads)."""
  from fer_jax.errors import USER_ERROR_STATUS
  assert result.returncode == USER_ERROR_STATUS, (result.returncode, result.stderr[-3000:])
  tracebacks = result.stderr.split("Traceback (most recent call last)")[1:]
  # A library thread's traceback may be cut anywhere by our exit; it never passes through fer_jax.
  assert all(foreign_traceback and (foreign_traceback in text or "/fer_jax/" not in text) for text in tracebacks), \
      result.stderr[-3000:]
  message = result.stderr[result.stderr.rindex("error: "):]
  for fragment in fragments:
    assert fragment in message, (fragment, message)


def ynn_convolutions(hlo: str) -> list[str]:
  """The YNNPACK fusions of a compiled XLA:CPU program's text whose computation holds a convolution."""
  bodies = dict(re.findall(r"^(%\S+) \(.*?\{\n(.*?)\n\}", hlo, re.MULTILINE | re.DOTALL))
  fusions = re.findall(r"^\s*(%\S+) = .*?calls=(%[\w.\-]+).*\"__ynn_fusion\"", hlo, re.MULTILINE)
  return [name for name, called in fusions if " convolution(" in bodies.get(called, "")]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def killed_at_end(processes):
  """`processes`, each killed on leaving if still running: a process stuck in a barrier or a
  collective ignores SIGTERM."""
  try:
    yield processes
  finally:
    for process in processes:
      process.kill()


def compiled_during(action) -> collections.Counter:
  """The XLA programs `action()` compiles, counted by name."""
  names = collections.Counter()
  listener = lambda event, _, fun_name="", **__: names.update([fun_name]) if event == watched_step.COMPILE_EVENT else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    action()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return names


def restore_state(checkpoints, step: int, abstract_state: dict, config=None) -> dict:
  """The saved training state, checked then read as a resumed TrainingRun does (`check_resumable`, then
  `restore_checked`)."""
  return checkpointing.restore_checked(checkpoints, step,
                                       checkpointing.check_resumable(checkpoints, step, abstract_state, config))
