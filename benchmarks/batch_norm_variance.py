"""BatchNorm's batch variance: accuracy and cost of its forms, one JSON line per figure.

  python benchmarks/batch_norm_variance.py [--size=224] [--batch=16] [--rounds=8]

Results on the shared 2-core CPU: batch_norm_variance.jsonl (cost and accuracy with --rounds=0; the
float32 step times from --rounds=5, run under a load average of 20; 11 lines with shifted_one_pass
from `--rounds=0 --dtypes=float32`; the last 8, with two_pass_8_shares, from `--dtypes=`, accuracy only).

Forms (each returns the mean and the biased variance, in float32):
  one_pass            E[x²] − E[x]², clipped at 0 (Flax's default; fer_jax's form before this script)
  two_pass            mean((x − mean)²): fer_jax's `batch_statistics` on one device (Flax's
                      use_fast_variance=False)
  shifted_one_pass    E[(x − s)²] − E[x − s]², s the first value of each channel: one pass, as the
                      one_pass form, with the mean's size taken out first
  two_pass_8_shares   (accuracy only) `batch_norm.sharded_batch_moments` over 8 shares: each share's
                      two passes, combined; fer_jax's form on a batch split over 8 devices
Until BatchNorm's gradient was written out (f0561af) autodiff differentiated the form, and another,
two_pass_constant (the mean as a constant inside the variance), was the library's for its shorter
backward pass; the recorded lines before shifted_one_pass's, batch_norm_variance.jsonl, hold it.
Figures:
  accuracy   the largest relative error of the variance over 64 channels of 16×14×14 values with
             mean/std ratios 1 … 1e4, float32 and bfloat16 input, against float64 NumPy on the very
             values the layer sees (the input already rounded to its dtype);
  cost       XLA's cost analysis (flops, bytes accessed) and memory analysis (temporaries) of one
             jitted DAN train step (ResNet-18 + 4 heads, float32 and bfloat16 compute);
  step_time  that step on this machine, the forms interleaved round by round in one process
             (median seconds; run `uptime` beside it: a loaded machine slows every form alike).
Each form replaces `batch_norm.batch_statistics`, which only the forward pass computes now: the
backward pass is `batch_norm.normalise_batch`'s for every form, so `cost` and `step_time` compare
forward passes.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fer_jax import api  # noqa: E402
from fer_jax import mesh as mesh_lib  # noqa: E402
from fer_jax import models  # noqa: E402
from fer_jax import optim  # noqa: E402
from fer_jax import train  # noqa: E402
from fer_jax.models import batch_norm  # noqa: E402


def one_pass(x, axes):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x, axes)
  return mean, jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)


def shifted_one_pass(x, axes):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  shift = jax.lax.stop_gradient(x[(0,) * (x.ndim - 1)])
  mean, mean_square = jnp.mean(x - shift, axes), jnp.mean(jnp.square(x - shift), axes)
  return shift + mean, jnp.maximum(mean_square - jnp.square(mean), 0.0)


def two_pass_8_shares(x, axes):
  """batch_norm.sharded_batch_moments over 8 equal shares of the batch: the arithmetic of the train
  step's BatchNorm on 8 devices, here on one (the all-gather aside)."""
  with jax.sharding.use_abstract_mesh(mesh_lib.make_mesh(jax.devices()[:1]).abstract_mesh):
    return batch_norm.sharded_batch_moments(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axes, 8)


FORMS = {"one_pass": one_pass, "two_pass": batch_norm.batch_statistics, "shifted_one_pass": shifted_one_pass}
ACCURACY_FORMS = {**FORMS, "two_pass_8_shares": two_pass_8_shares}
RATIOS = (1.0, 1e2, 1e3, 1e4)


def accuracy() -> list[dict]:
  """bfloat16 cannot hold a spread below mean·2⁻⁸: such channels round to one value (exact variance 0)
  and are counted apart, with the largest variance a form reports for them."""
  rng = np.random.default_rng(0)
  std = rng.uniform(0.5, 2.0, 64)
  rows = []
  for dtype in ("float32", "bfloat16"):
    for ratio in RATIOS:
      x = jnp.asarray(rng.normal(ratio * std, std, (16, 14, 14, 64)), dtype)
      exact = np.var(np.asarray(x.astype(jnp.float32), np.float64), axis=(0, 1, 2))
      spread = exact > 0
      row = {"figure": "accuracy", "input": dtype, "mean_over_std": ratio, "constant_channels": int(np.sum(~spread))}
      for name, form in ACCURACY_FORMS.items():
        var = np.asarray(jax.jit(form, static_argnums=1)(x, (0, 1, 2))[1], np.float64)
        error = np.max(np.abs(var[spread] - exact[spread]) / exact[spread], initial=0.0)
        row[name] = {"max_relative_error": float(f"{error:.3g}")}
        if not spread.all():
          row[name]["max_variance_of_constant_channels"] = float(f"{np.max(var[~spread]):.3g}")
      rows.append(row)
  return rows


def dan_step(size: int, batch: int, dtype: str):
  """A jitted DAN train step, its state and one batch (the config of configs/dan.py:rafdb)."""
  config = api.load_config("configs/dan.py:rafdb")
  config.input.size, config.batch_size, config.model.dtype = size, batch, dtype
  method = models.get_method("dan")
  model = method.build(config.model)
  mesh = mesh_lib.make_mesh()
  abstract = models.abstract_variables(model, config)
  optimizer = optim.make_optimizer(config.optimizer, 100, config.num_epochs, abstract["params"])
  step = train.make_train_step(model, method.loss, config.loss, optimizer, mesh, 0)
  state = train.create_state(model, optimizer.tx, config, mesh)
  rng = np.random.default_rng(0)
  data = {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          "label": (np.arange(batch) % 7).astype(np.int32)}
  return step, state, jax.device_put(data, NamedSharding(mesh, P("data")))


def compiled_steps(size: int, batch: int, dtype: str) -> dict:
  """{form: (compiled step, state, batch)}, each traced with that form in the BatchNorm layers."""
  library_form, steps = batch_norm.batch_statistics, {}
  try:
    for name, form in FORMS.items():
      batch_norm.batch_statistics = form
      step, state, data = dan_step(size, batch, dtype)
      steps[name] = (step.lower(state, data).compile(), state, data)
  finally:
    batch_norm.batch_statistics = library_form
  return steps


def cost(compiled) -> dict:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  memory = compiled.memory_analysis()
  return {"gflops": round(analysis["flops"] / 1e9, 3), "gb_accessed": round(analysis["bytes accessed"] / 1e9, 3),
          "temp_mb": round(memory.temp_size_in_bytes / 2**20, 1)}


def step_times(steps: dict, rounds: int) -> dict:
  """Median seconds per step of each form, the forms taking turns (the step donates its state)."""
  states = {name: state for name, (_, state, _) in steps.items()}
  times = {name: [] for name in steps}
  for round_ in range(rounds + 1):  # round 0 warms up
    for name, (compiled, _, data) in steps.items():
      start = time.perf_counter()
      states[name] = jax.block_until_ready(compiled(states[name], data))[0]
      if round_:
        times[name].append(time.perf_counter() - start)
  return {name: round(statistics.median(t), 3) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args()
  for row in accuracy():
    print(json.dumps(row), flush=True)
  for dtype in filter(None, args.dtypes.split(",")):
    steps = compiled_steps(args.size, args.batch, dtype)
    where = {"model": "dan", "size": args.size, "batch": args.batch, "dtype": dtype, "backend": jax.default_backend()}
    for name, (compiled, _, _) in steps.items():
      print(json.dumps({"figure": "cost", **where, "form": name, **cost(compiled)}), flush=True)
    if args.rounds:
      print(json.dumps({"figure": "step_time", **where, "rounds": args.rounds,
                        "median_seconds": step_times(steps, args.rounds), "loadavg": os.getloadavg()}), flush=True)


if __name__ == "__main__":
  main()
