"""SCAN-CCI's attention branch alone (layer2 map → logits, gradient of params and input), two
versions of fer_jax/models/scan_cci.py interleaved in one process on the default device.

  python benchmarks/scan_attention_branch.py OLD/fer_jax/models/scan_cci.py [--batch 16] [--rounds 10] [--separate]
"""

import argparse
import importlib.util
import time

import jax
import numpy as np

from fer_jax.models import scan_cci


def branch_module(path: str):
  spec = importlib.util.spec_from_file_location("old_scan_cci", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def compiled_gradient(module, features, shared: bool):
  branch = module.AttentionBranch(num_classes=7, shared_local_units=shared)
  variables = branch.init(jax.random.key(0), features, train=False)

  def loss(params, features):
    (logits, _), updates = branch.apply({"params": params, "batch_stats": variables["batch_stats"]}, features,
                                        train=True, mutable=["batch_stats"])
    return jax.numpy.sum(logits ** 2), updates

  step = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
  compiled = step.lower(variables["params"], features).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  print(f"{module.__name__}: GFLOP {cost['flops'] / 1e9:.2f}, GB accessed {cost['bytes accessed'] / 1e9:.3f}",
        flush=True)
  return lambda: jax.block_until_ready(compiled(variables["params"], features))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("old_module")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--separate", action="store_true", help="one SCAN unit per region")
  args = parser.parse_args()
  features = jax.random.normal(jax.random.key(1), (args.batch, 28, 28, 512))
  runs = {"old": compiled_gradient(branch_module(args.old_module), features, not args.separate),
          "new": compiled_gradient(scan_cci, features, not args.separate)}
  times = {name: [] for name in runs}
  for round_index in range(args.rounds + 1):  # round 0 is the warm-up
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      if round_index:
        times[name].append(time.perf_counter() - start)
  for name, values in times.items():
    print(f"{name}: median {np.median(values):.3f} s, min {np.min(values):.3f} s over {args.rounds} rounds")


if __name__ == "__main__":
  main()
