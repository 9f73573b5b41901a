"""What config.model.remat trades: memory kept for the backward pass against compute, per method.

  python benchmarks/remat.py [CONFIG ...] [--batch_size=B] [--dtype=bfloat16] [--output=FILE.jsonl]

For each config (default: every method's paper config at its paper batch size) and each remat
policy, from shapes and the lowered train step alone (nothing runs, so any machine gives the
accelerator's figures): the bytes one device's forward pass keeps for the backward pass
(`fer_jax.benchmark.saved_for_backward_bytes`) and the train step's FLOPs as lowered, before XLA's
optimisations (recomputations included: XLA's CPU compiler merges them back into the forward pass,
GPUs and TPUs run them). Prints a markdown table.
"""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import paper_configs_parser, write_rows  # noqa: E402  pylint: disable=wrong-import-position

from fer_jax import api  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax import benchmark  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax import models  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax.models import layers  # noqa: E402  pylint: disable=wrong-import-position



def measure(spec: str, remat: str, batch_size: int, dtype: str) -> dict:
  """One row; batch_size 0 is the config's own."""
  config = api.load_config(spec)
  config.model.remat, config.model.dtype = remat, dtype
  batch = batch_size or config.batch_size
  images = jax.ShapeDtypeStruct(models.dummy_images(config, batch).shape, jnp.float32)
  step, state = benchmark.abstract_train_step(config)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  lowered = step.lower(state, {"image": images, "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
                               "mask": jax.ShapeDtypeStruct((batch,), jnp.float32)})
  return {"config": spec, "model": config.model.name, "input_size": config.input.size, "batch_size": batch,
          "dtype": dtype, "remat": remat, "jax": jax.__version__,
          "saved_for_backward_bytes": benchmark.saved_for_backward_bytes(models.build_model(config), variables, images),
          "lowered_train_flops_per_step": benchmark.program_flops(lowered)}


def table(rows: list[dict]) -> str:
  lines = ["| config | size | batch | dtype | remat | kept for backward GiB | × none | train GFLOP/img | × none |",
           "|---|---|---|---|---|---|---|---|---|"]
  plain = {(row["config"], row["dtype"]): row for row in rows if row["remat"] == "none"}
  for row in rows:
    base = plain.get((row["config"], row["dtype"]))
    flops, base_flops = row["lowered_train_flops_per_step"], base and base["lowered_train_flops_per_step"]
    memory_ratio = f"{row['saved_for_backward_bytes'] / base['saved_for_backward_bytes']:.2f}" if base else "–"
    flops_ratio = f"{flops / base_flops:.2f}" if flops and base_flops else "–"
    gflops = f"{flops / row['batch_size'] / 1e9:.2f}" if flops else "–"  # None: this JAX gave no count
    lines.append(f"| `{row['config']}` | {row['input_size']}² | {row['batch_size']} | {row['dtype']} | {row['remat']} "
                 f"| {row['saved_for_backward_bytes'] / 2**30:.2f} | {memory_ratio} | {gflops} | {flops_ratio} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  args = paper_configs_parser(__doc__.split("\n")[0]).parse_args()
  rows = [measure(spec, remat, args.batch_size, args.dtype) for spec in args.configs
          for remat in layers.REMAT_POLICIES]
  write_rows(rows, args.output, table(rows))


if __name__ == "__main__":
  main()
