"""Two processes × 4 CPU devices (gloo collectives) train, checkpoint and evaluate like one process
with 8 devices: the same first losses (the same global batches), one set of outputs, a
checkpoint that restores on one device."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from fer_jax import checkpointing
from fer_jax import models
from helpers import ROOT, get_config, tiny_run

pytestmark = pytest.mark.integration


def _args(workdir, data_dir):
  return ["--config=configs/dan.py:synthetic", f"--workdir={workdir}", "--config.dataset.name=synthetic/tiny",
          f"--config.dataset.data_dir={data_dir}", "--config.input.size=32", "--config.batch_size=16",
          "--config.eval_batch_size=20", "--config.num_epochs=1", "--config.log_every_steps=4",
          "--config.data_workers=0", "--config.select_metric=accuracy"]


def _env(devices: int) -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _first_loss(log: str) -> float:
  return float(re.search(r"step 4/\d+ epoch [\d.]+ loss ([\d.]+)", log).group(1))


def _report(workdir) -> dict:
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  variables = checkpointing.restore_model(str(workdir), models.abstract_variables(models.build_model(config), config))
  assert variables["params"]["fc"]["kernel"].shape == (512, 7)  # restored on this one-device process
  with open(os.path.join(workdir, "eval_results.json")) as f:
    return json.load(f)


def test_two_processes_train_as_one_with_all_their_devices(tmp_path, tiny_data_dir):
  single = subprocess.run([sys.executable, "-m", "fer_jax.main", *_args(tmp_path / "one", tiny_data_dir)],
                          cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  address = f"localhost:{_free_port()}"
  processes = [subprocess.Popen([sys.executable, "-m", "fer_jax.main", *_args(tmp_path / "two", tiny_data_dir),
                                 "--distributed", f"--coordinator_address={address}", "--num_processes=2",
                                 f"--process_id={index}"], cwd=ROOT, env=_env(4), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for index in range(2)]
  logs = [process.communicate(timeout=600)[1] for process in processes]
  assert [process.returncode for process in processes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert "JAX process 1/2" in logs[1] and "8 devices" in logs[0]
  # The mean loss of the first four steps: the same global batches through the same model.
  assert _first_loss(logs[0]) == pytest.approx(_first_loss(single.stderr), rel=1e-4)
  one, two = _report(tmp_path / "one"), _report(tmp_path / "two")
  assert two["num_examples"] == one["num_examples"] == 70
  assert (tmp_path / "two" / "best").is_dir() and (tmp_path / "two" / "confusion_matrix.png").exists()
