"""Speed of the input pipeline and of the jitted steps, one JSON line per run.

  python -m fer_jax.benchmark --config=configs/dan.py:rafdb --input=MODE [--steps=N] \
      [--config.batch_size=B] [--config.dataset.data_dir=DIR] [--config.dataset.cache=none|host|device]

--input picks what is timed (always after compilation and warm-up steps), `img_per_s` is its speed:
  synthetic   the jitted train and eval steps on device-resident random model inputs, with
              achieved TFLOP/s from XLA's cost analysis and MFU where the device's peak is known;
  host        the host stream alone: uint8 batches of the prepared training split delivered onto
              the device (decoded by worker processes, or from the decoded cache), no augmentation;
  augment     the train pipeline alone on device-resident uint8 batches at the stored size;
  end_to_end  the real train step fed by the real pipeline (host stream + device augmentation).
The modes other than synthetic read the prepared data set the config names.
"""

import itertools
import json
import math
import time

from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from fer_jax import validation
from fer_jax.data import pipeline

INPUT_MODES = ("synthetic", "host", "augment", "end_to_end")


# Dense bf16 peak TFLOP/s per device, for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5p": 459.0, "TPU v6 lite": 918.0}


def peak_tflops(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in device_kind.lower()), None)



def _flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _describe(config, mesh, batch_size: int) -> dict:
  return {"model": config.model.name, "dataset": config.dataset.name, "input_size": config.input.size,
          "dtype": config.model.dtype, "batch_size": batch_size, "devices": mesh.devices.size,
          "device_kind": jax.devices()[0].device_kind}


def benchmark(config, steps: int) -> dict:
  """--input=synthetic: the train and eval steps on random model inputs already on the device."""
  mesh = mesh_lib.make_mesh()
  method = models.get_method(config.model.name)
  model = method.build(config.model)
  batch_size = config.batch_size
  tx = optim.make_optimizer(config.optimizer, 1, 1, models.abstract_variables(model, config)["params"])
  schedule = optim.lr_schedule(config.optimizer, 1, 1)
  state = train.create_state(model, tx, config, mesh)
  sharding = NamedSharding(mesh, P("data"))
  keys = jax.random.split(jax.random.key(0))
  batch = jax.device_put({
      "image": jax.random.normal(keys[0], models.dummy_images(config, batch_size).shape),
      "label": jax.random.randint(keys[1], (batch_size,), 0, config.model.num_classes),
      "mask": jnp.ones((batch_size,), jnp.float32)}, sharding)

  train_step = train.make_train_step(model, method.loss, config.loss, tx, schedule, mesh, config.seed)
  train_flops = _flops(train_step, state, batch)
  holder = {"state": state}

  def run_train():
    holder["state"], metrics = train_step(holder["state"], batch)
    return metrics["loss"]

  train_seconds = _time_stream(itertools.repeat(None), 1, steps, lambda _: run_train())
  variables = {"params": holder["state"]["params"], "batch_stats": holder["state"]["batch_stats"]}
  eval_step = evaluate.confusion_step(model, config.model.num_classes, mesh)
  eval_seconds = _time_stream(itertools.repeat(None), 1, steps, lambda _: eval_step(variables, batch))

  device_kind = jax.devices()[0].device_kind
  achieved = train_flops / train_seconds / 1e12
  peak = peak_tflops(device_kind)
  return {
      "input": "synthetic", **_describe(config, mesh, batch_size),
      "img_per_s": round(batch_size / train_seconds, 2),
      "train_img_per_s": round(batch_size / train_seconds, 2),
      "eval_img_per_s": round(batch_size / eval_seconds, 2),
      "train_tflops_per_s": round(achieved, 4),
      "mfu": round(achieved / (peak * mesh.devices.size), 4) if peak else None,
  }


def _train_data(config, mesh, steps: int) -> pipeline.TrainData:
  """The run's training stream, with enough epochs for `steps` steps."""
  data = pipeline.TrainData(config, mesh)
  if data.num_steps < steps:
    config.num_epochs = math.ceil(steps / data.steps_per_epoch)
    data = pipeline.TrainData(config, mesh)
  return data


def _time_stream(batches, warmup: int, steps: int, consume) -> float:
  """Seconds per item of `batches` over `steps` items after `warmup`, each handed to `consume`."""
  iterator = iter(batches)
  for _ in range(warmup):
    jax.block_until_ready(consume(next(iterator)))
  start = time.perf_counter()
  for _ in range(steps):
    out = consume(next(iterator))
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / steps
  if hasattr(iterator, "close"):
    iterator.close()  # stops the decoding workers and frees their shared memory
  return seconds


def benchmark_input(config, mode: str, steps: int, warmup: int) -> dict:
  """--input=host | augment | end_to_end on the prepared data set."""
  mesh = mesh_lib.make_mesh()
  data = _train_data(config, mesh, steps + warmup)
  start = time.perf_counter()
  data.cache()
  result = {"input": mode, **_describe(config, mesh, data.global_batch), "stored_shape": list(data.shape),
            "cache": data.cache_mode, "cache_seconds": round(time.perf_counter() - start, 2),
            "workers": data.workers if data.cache_mode == "none" else 0}
  if mode == "host":
    seconds = _time_stream(data.batches(0), warmup, steps, lambda batch: batch["image"])
  elif mode == "augment":
    sharding = NamedSharding(mesh, P("data"))
    images = jax.device_put(jax.random.randint(jax.random.key(0), (data.global_batch, *data.shape), 0, 256)
                            .astype(jnp.uint8), sharding)
    augment = jax.jit(data.augment, out_shardings=sharding)
    offsets = jnp.arange(data.global_batch)
    batches = ((images, offsets + i * data.global_batch) for i in range(warmup + steps))
    seconds = _time_stream(batches, warmup, steps, lambda batch: augment(*batch))
  else:
    method = models.get_method(config.model.name)
    model = method.build(config.model)
    tx = optim.make_optimizer(config.optimizer, data.steps_per_epoch, config.num_epochs,
                              models.abstract_variables(model, config)["params"])
    schedule = optim.lr_schedule(config.optimizer, data.steps_per_epoch, config.num_epochs)
    holder = {"state": train.create_state(model, tx, config, mesh)}
    loss_config = train.loss_config_for(config, data.split)
    train_step = train.make_train_step(model, method.loss, loss_config, tx, schedule, mesh, config.seed,
                                       data.augment)

    def step(batch):
      holder["state"], metrics = train_step(holder["state"], batch)
      return metrics["loss"]
    seconds = _time_stream(data.batches(0), warmup, steps, step)
  return {**result, "img_per_s": round(data.global_batch / seconds, 2)}


def main(argv):
  del argv
  args = flags.FLAGS
  validation.validate(args.config, training=True)
  if args.input == "synthetic":
    result = benchmark(args.config, args.steps)
  else:
    result = benchmark_input(args.config, args.input, args.steps, args.warmup)
  print(json.dumps(result))


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  flags.DEFINE_enum("input", "synthetic", list(INPUT_MODES), "What to time (see the module docstring).")
  flags.DEFINE_integer("steps", 10, "Timed steps (after the warm-up).")
  flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation, worker start-up); not for synthetic.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
