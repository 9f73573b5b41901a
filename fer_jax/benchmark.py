"""Speed of the jitted train and eval steps on device-resident synthetic batches.

  python -m fer_jax.benchmark --config=configs/dan.py:rafdb [--config.batch_size=B]

Prints one JSON line: img/s for both steps (after compilation), achieved TFLOP/s from XLA's
cost analysis, MFU where the device's peak is known, device kind, batch size.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import optim
from fer_jax import train
from fer_jax.models import get_method


# Dense bf16 peak TFLOP/s per device, for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5p": 459.0, "TPU v6 lite": 918.0}


def peak_tflops(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in device_kind.lower()), None)


def _time(fn, steps: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def _flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def benchmark(config, steps: int) -> dict:
  mesh = train.make_mesh()
  method = get_method(config.model.name)
  model = method.build(config.model)
  batch_size = config.batch_size
  tx = optim.make_optimizer(config.optimizer, 1, 1, train.abstract_variables(model, config)["params"])
  schedule = optim.lr_schedule(config.optimizer, 1, 1)
  state = train.create_state(model, tx, config, mesh)
  sharding = NamedSharding(mesh, P("data"))
  keys = jax.random.split(jax.random.key(0))
  batch = jax.device_put({
      "image": jax.random.normal(keys[0], train.dummy_images(config, batch_size).shape),
      "label": jax.random.randint(keys[1], (batch_size,), 0, config.model.num_classes),
      "mask": jnp.ones((batch_size,), jnp.float32)}, sharding)

  train_step = train.make_train_step(model, method.loss, config.loss, tx, schedule, mesh, config.seed)
  train_flops = _flops(train_step, state, batch)
  holder = {"state": state}

  def run_train():
    holder["state"], metrics = train_step(holder["state"], batch)
    return metrics["loss"]

  train_seconds = _time(run_train, steps)
  variables = {"params": holder["state"]["params"], "batch_stats": holder["state"]["batch_stats"]}
  eval_step = evaluate.confusion_step(model, config.model.num_classes, mesh)
  eval_seconds = _time(lambda: eval_step(variables, batch), steps)

  device_kind = jax.devices()[0].device_kind
  achieved = train_flops / train_seconds / 1e12
  peak = peak_tflops(device_kind)
  return {
      "model": config.model.name, "dataset": config.dataset.name, "input_size": config.input.size,
      "dtype": config.model.dtype, "batch_size": batch_size, "devices": mesh.devices.size,
      "device_kind": device_kind,
      "train_img_per_s": round(batch_size / train_seconds, 2),
      "eval_img_per_s": round(batch_size / eval_seconds, 2),
      "train_tflops_per_s": round(achieved, 4),
      "mfu": round(achieved / (peak * mesh.devices.size), 4) if peak else None,
  }


def main(argv):
  del argv
  print(json.dumps(benchmark(flags.FLAGS.config, flags.FLAGS.steps)))


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
