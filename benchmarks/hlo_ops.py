"""One config's compiled train step: compare_step.py's figures, then each gather, scatter, sort and
custom-call of the optimised HLO with its shape and the op it came from.

  python benchmarks/hlo_ops.py configs/apvit.py:rafdb [--batch 4]
"""

import argparse
import re

from compare_step import compiled_step
from fer_jax import api
from fer_jax import models


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("config")
  parser.add_argument("--batch", type=int, default=4)
  args = parser.parse_args()
  config = api.load_config(args.config)
  compiled, _, _, figures = compiled_step(models.get_method(config.model.name), config, args.batch)
  print(figures)
  for line in compiled.as_text().splitlines():
    found = re.match(r"\s+(?:ROOT )?%?[\w.\-]+ = (\(.*?\)|\S+) (gather|scatter|sort|custom-call)\(", line)
    if found:
      target = re.search(r'custom_call_target="(\w+)"', line)
      op_name = re.search(r'op_name="([^"]+)"', line)
      print(found[2], target[1] if target else "", found[1], op_name[1] if op_name else "")


if __name__ == "__main__":
  main()
