"""Speed candidates (benchmarks/compile_candidates.py's variants) timed on this machine's devices.

  python benchmarks/run_candidates.py --variants=none,conv_input_channels_padded,max_pool_xla_gradient \\
      [CONFIG ...] [--dtype=bfloat16] [--batch_size=B] [--steps=20] [--warmup=5] [--rounds=1] \\
      [--output=FILE.jsonl [--resume]]

Each variant runs in a process of its own (a variant replaces a piece of fer_jax for the whole
process), and there each config's train and eval steps are timed as `python -m fer_jax.benchmark
--input=synthetic` times them: one JSON line per config and variant, with "variant" and "round"
added. Rounds interleave the variants (A B A B …), so that a drift of the machine falls on each.
The compile-only variants (compile_candidates.COMPILE_ONLY) are refused, and so is a config that `python -m
fer_jax.benchmark` would refuse (fer_jax.validation, with --dtype and --batch_size in place): the first variant's
process checks every config before timing any and exits 2, and no other variant runs. With --resume, a variant and
round whose lines --output holds for every config is not run again (a call cut short, or a variant failing, costs
a rerun only what is missing).
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile_candidates  # noqa: E402  pylint: disable=wrong-import-position
from common import paper_configs_parser, write_rows  # noqa: E402  pylint: disable=wrong-import-position
import render_table  # noqa: E402  pylint: disable=wrong-import-position

from fer_jax import api  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax import benchmark  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax import validation  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax.errors import USER_ERROR_STATUS, UserError  # noqa: E402  pylint: disable=wrong-import-position


def time_variant(args) -> None:
  """In this process: swap args.one in, then time each config."""
  compile_candidates.swap_in(args.one)
  for spec, config in checked_configs(args).items():
    row = {"config": spec, "variant": args.one, "round": args.round, **benchmark.environment(),
           **benchmark.benchmark(config, args.steps, args.warmup)}
    write_rows([row], args.output, json.dumps(row) + "\n")


def checked_configs(args) -> dict:
  """{spec: config} of args.configs with --dtype and --batch_size in place, each checked as fer_jax.benchmark checks
  its config (config.model.dtype "auto" resolved, the batch over this machine's devices), in the process that
  times them: the parent would take the accelerator's memory. A refused one exits with one error line: a dtype
  misspelt gave a TypeError's traceback in each variant's process, and a batch that does not divide over the
  devices one from deep inside JAX."""
  configs = {}
  for spec in args.configs:
    try:
      config = api.load_config(spec)
      config.model.dtype = args.dtype
      config.batch_size = args.batch_size or config.batch_size
      validation.validate(config, training=True)
    except UserError as error:
      print(f"error: {spec} (--dtype={args.dtype}, --batch_size={args.batch_size}): {error}", file=sys.stderr)
      sys.exit(USER_ERROR_STATUS)
    configs[spec] = config
  return configs


def timed_before(output: str) -> set[tuple[str, str, int]]:
  """(config, variant, round) of the lines `output` holds (a line a killed call cut short is not one)."""
  if not output or not os.path.exists(output):
    return set()
  return {(row["config"], row["variant"], row["round"]) for row in render_table.read_lines(output)}


def main() -> None:
  parser = paper_configs_parser(__doc__.split("\n")[0])
  parser.add_argument("--variants", default="none",
                      help="comma-separated compile_candidates variants; a+b swaps in a and b together")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--resume", action="store_true", help="skip the variants and rounds --output holds")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # the child process's variant
  parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    time_variant(args)
    return
  variants = args.variants.split(",")
  unknown = compile_candidates.unknown_variants(variants)
  refused = [variant for variant in variants if set(variant.split("+")) & compile_candidates.COMPILE_ONLY]
  if unknown or refused:
    parser.error(f"unknown variants {unknown}, compile-only variants {refused}; "
                 f"choose from {sorted(set(compile_candidates.VARIANTS) - compile_candidates.COMPILE_ONLY)}")
  passed = [*args.configs, f"--dtype={args.dtype}", f"--batch_size={args.batch_size}", f"--steps={args.steps}",
            f"--warmup={args.warmup}", f"--output={args.output}"]
  failed, done = [], timed_before(args.output) if args.resume else set()
  for round_index in range(args.rounds):
    for name in variants:
      if all((spec, name, round_index) in done for spec in args.configs):
        print(f"round {round_index}: {name}, timed before", file=sys.stderr, flush=True)
        continue
      print(f"round {round_index}: {name}", file=sys.stderr, flush=True)
      child = subprocess.run([sys.executable, __file__, *passed, f"--one={name}", f"--round={round_index}"], check=False)
      if child.returncode == USER_ERROR_STATUS:  # a config refused: every variant would refuse it
        sys.exit(USER_ERROR_STATUS)
      if child.returncode:
        failed.append(f"{name} (round {round_index})")
  if failed:
    sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
  main()
