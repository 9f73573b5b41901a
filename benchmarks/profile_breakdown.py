"""Where a train step's time goes, from the trace `fer_jax.benchmark --profile_dir=DIR` writes.

  python -m fer_jax.benchmark --config=configs/dan.py:rafdb --input=synthetic --config.batch_size=16 \\
      --steps=2 --warmup=1 --profile_dir=DIR
  python benchmarks/profile_breakdown.py DIR [--top 15]

Each op of the trace (XLA's thunks on the CPU; on a GPU, the device's kernels, those that a command
buffer launched by the fusion they are named after) is matched to its instruction in the compiled train
step (DIR/train_step.hlo.txt) and put in a category by the JAX operation its metadata names:
convolutions forward, their gradients as XLA's convolutions, the CPU's 1×1 kernel gradients as
products, pools, BatchNorm, activations, the optimiser, collectives. Prints milliseconds per step of
each category and of the slowest ops. The sums are of op durations: ops that run side by side on
several threads add up to more than the step's wall time. On the CPU, XLA's own convolution kernels
(fer_jax's steps, mesh.CPU_COMPILER_OPTIONS) hand their work to Eigen's thread pool, which the trace
does not record: their ops show little more than the hand-over, and the step's time is the measure.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re

from fer_jax import benchmark

# (category, regex on the op's JAX name) in order; the first that matches wins.
CATEGORIES = [
    ("collectives", r"all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all"),
    ("conv 1×1 kernel gradient as a product", r"transpose\(jvp.*conv.*(branch_0_fun|cond)/"),
    ("conv gradient (XLA's)", r"transpose\(jvp.*conv_general_dilated"),
    ("conv forward", r"conv_general_dilated"),
    ("pool gradient", r"transpose\(jvp.*(pool|reduce_window|cond/branch)"),
    ("pool forward", r"pool|reduce_window"),
    ("BatchNorm gradient", r"transpose\(jvp.*(bn|norm)"),
    ("BatchNorm forward", r"/(bn|\w*_bn|\w*norm\w*)\d*/"),
    ("matmul", r"dot_general"),
    ("activation gradient", r"transpose\(jvp.*(relu|max|select_n|prelu|gelu|sigmoid)"),
    ("activation forward", r"relu|max|prelu|gelu|sigmoid"),
    ("optimiser", r"optax|apply_updates|momentum|sgd|adam|lamb|scale_by"),
]


UNATTRIBUTED = "device kernels of no instruction"


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (its opcode, the JAX op name of its metadata)} for the compiled step."""
  names = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(", line)
    if match:
      op_name = re.search(r'op_name="([^"]+)"', line)
      names[match.group(1)] = (match.group(2), op_name.group(1) if op_name else "")
  return names


def category(instruction: str, opcode: str, op_name: str) -> str:
  if opcode == "convolution" and not op_name:  # XLA's rewritten gradients lose their metadata
    return "conv gradient (XLA's)"
  for name, pattern in CATEGORIES:
    if re.search(pattern, instruction if name == "collectives" else op_name):
      return name
  return "other"


def traced_instruction(event: dict, names: dict) -> str | None:
  """The compiled step's instruction an op of the trace ran: its `hlo_op`, or, for a GPU kernel that a
  command buffer (a CUDA graph) launched, the fusion its kernel is named after ("loop_add_fusion_3")."""
  kernel = event.get("name", "")
  candidates = (event.get("args", {}).get("hlo_op"), kernel, re.sub(r"_(\d+)$", r".\1", kernel))
  return next((name for name in candidates if name in names), None)


def breakdown(directory: str, steps: int) -> tuple[collections.Counter, collections.Counter]:
  """(ms per step by category, ms per step by op) of the newest trace under `directory`."""
  trace, = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "perfetto_trace.json.gz")))[-1:]
  with gzip.open(trace) as file:
    events = json.load(file)["traceEvents"]
  with open(os.path.join(directory, "train_step.hlo.txt")) as file:
    names = instructions(file.read())
  devices = {event["pid"] for event in events
             if event.get("ph") == "M" and event.get("args", {}).get("name", "").startswith("/device:")}
  by_category, by_op = collections.Counter(), collections.Counter()
  for event in events:
    if event.get("ph") != "X" or (devices and event.get("pid") not in devices):
      continue
    name, milliseconds = traced_instruction(event, names), event["dur"] / 1e3 / steps
    if name is None:
      if devices:  # a device's kernel of no instruction (a copy of a command buffer's own): its time still counts
        by_category[UNATTRIBUTED] += milliseconds
      continue
    opcode, op_name = names[name]
    by_category[category(name, opcode, op_name)] += milliseconds
    op_name = re.sub(r"^jit\(train_step\)/", "", op_name)
    by_op[f"{name} ({op_name})"] += milliseconds
  return by_category, by_op


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("directory")
  parser.add_argument("--top", type=int, default=15, help="how many of the slowest ops to list")
  args = parser.parse_args()
  by_category, by_op = breakdown(args.directory, benchmark.PROFILED_STEPS)
  print(f"ms per step, summed over ops ({sum(by_category.values()):.1f} in all)")
  for name, milliseconds in by_category.most_common():
    print(f"{milliseconds:9.1f}  {name}")
  print(f"\nslowest {args.top} ops, ms per step")
  for name, milliseconds in by_op.most_common(args.top):
    print(f"{milliseconds:9.1f}  {name[:140]}")


if __name__ == "__main__":
  main()
