"""Where a train step's time goes, from the trace `fer_jax.benchmark --profile_dir=DIR` writes.

  python -m fer_jax.benchmark --config=configs/dan.py:rafdb --input=synthetic --config.batch_size=16 \\
      --steps=2 --warmup=1 --profile_dir=DIR
  python benchmarks/profile_breakdown.py DIR [--top 15] [--roofline benchmarks/gpu_targets/h200.txtpb]

Each op of the trace (XLA's thunks on the CPU; on a GPU, the device's kernels, those that a command
buffer launched by the fusion they are named after, a kernel that identical fusions share given to
each of them in turn) is matched to its instruction in the compiled train
step (DIR/train_step.hlo.txt) and put in a category by the JAX operation its metadata names:
convolutions forward, their gradients as XLA's convolutions, the CPU's 1×1 kernel gradients as
products, pools, BatchNorm, activations, the optimiser, collectives. Prints milliseconds per step of
each category and of the slowest ops. The sums are of op durations: ops that run side by side on
several threads add up to more than the step's wall time. On the CPU, XLA's own convolution kernels
(fer_jax's steps, mesh.CPU_COMPILER_OPTIONS) hand their work to Eigen's thread pool, which the trace
does not record: their ops show little more than the hand-over, and the step's time is the measure.
With --roofline (a GPU's trace), each kernel is set beside its roofline on the device the target
describes (benchmarks/gpu_compile.py's, of the same compiled step): measured, roofline and excess ms
per step by category, then the kernels furthest over theirs. Take the target of the GPU the trace was
recorded on (benchmarks/gpu_targets: h100.txtpb for an H100 80GB HBM3 at 3.35 TB/s, h200.txtpb for an
H200 at 4.8 TB/s): another's bandwidth moves every memory-bound roofline.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

from fer_jax import benchmark

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_compile  # noqa: E402  pylint: disable=wrong-import-position  # its kernels and roofline

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


def kernel_groups(hlo_text: str) -> dict[str, list[str]]:
  """{instruction: every instruction that launches the same GPU kernel, in schedule order}. XLA's GPU
  compiler emits identical fusions once (their metadata's `deduplicated_name` is the same) and a trace
  names each launch of that kernel after one of them: DAN's step launches one BatchNorm reduction's
  second stage 26 times under one name."""
  by_kernel = collections.defaultdict(list)
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?deduplicated_name=\"([^\"]+)\"", line)
    if match:
      by_kernel[match.group(2)].append(match.group(1))
  return {instruction: group for group in by_kernel.values() for instruction in group}


def traced_instruction(event: dict, names: dict) -> tuple[str | None, bool]:
  """The compiled step's instruction an op of the trace ran: its `hlo_op`, or, for a GPU kernel that a
  command buffer (a CUDA graph) launched, the fusion its kernel is named after ("loop_add_fusion_3");
  and whether it was found by the kernel's name."""
  hlo_op, kernel = event.get("args", {}).get("hlo_op"), event.get("name", "")
  if hlo_op in names:
    return hlo_op, False
  return next((name for name in (kernel, re.sub(r"_(\d+)$", r".\1", kernel)) if name in names), None), True


def measured_instructions(directory: str, steps: int) -> tuple[collections.Counter, float, str]:
  """(ms per step by instruction of the compiled step, ms per step of device kernels of no instruction,
  the compiled step's HLO text) from the newest trace under `directory`. The launches of a kernel that
  several instructions share go to them in turn, in the order the step runs them."""
  trace, = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "perfetto_trace.json.gz")))[-1:]
  with gzip.open(trace) as file:
    events = json.load(file)["traceEvents"]
  with open(os.path.join(directory, "train_step.hlo.txt")) as file:
    hlo_text = file.read()
  names, groups = instructions(hlo_text), kernel_groups(hlo_text)
  devices = {event["pid"] for event in events
             if event.get("ph") == "M" and event.get("args", {}).get("name", "").startswith("/device:")}
  by_instruction, unattributed, launches = collections.Counter(), 0.0, collections.Counter()
  for event in sorted((event for event in events if event.get("ph") == "X"), key=lambda event: event.get("ts", 0)):
    if devices and event.get("pid") not in devices:
      continue
    name, by_kernel_name = traced_instruction(event, names)
    milliseconds = event["dur"] / 1e3 / steps
    if name is None:
      unattributed += milliseconds if devices else 0.0  # a device's kernel of no instruction (a command buffer's own copy)
      continue
    if by_kernel_name and name in groups:
      group = groups[name]
      name, launches[group[0]] = group[launches[group[0]] % len(group)], launches[group[0]] + 1
    by_instruction[name] += milliseconds
  return by_instruction, unattributed, hlo_text


def breakdown(directory: str, steps: int) -> tuple[collections.Counter, collections.Counter]:
  """(ms per step by category, ms per step by op) of the newest trace under `directory`."""
  by_instruction, unattributed, hlo_text = measured_instructions(directory, steps)
  names = instructions(hlo_text)
  by_category, by_op = collections.Counter(), collections.Counter()
  if unattributed:
    by_category[UNATTRIBUTED] = unattributed
  for name, milliseconds in by_instruction.items():
    opcode, op_name = names[name]
    by_category[category(name, opcode, op_name)] += milliseconds
    by_op[f"{name} ({short_op_name(op_name)})"] += milliseconds
  return by_category, by_op


def short_op_name(op_name: str) -> str:
  return re.sub(r"^jit\(train_step\)/", "", op_name)


def against_roofline(directory: str, steps: int, bandwidth: float) -> tuple[list[dict], list[dict]]:
  """A GPU trace's kernels beside their roofline (benchmarks/gpu_compile.py: max(bytes / bandwidth,
  FLOPs / dense peak) of the same compiled step): (by category, by instruction), each row with
  measured, roofline and excess ms per step, most excess first. The roofline of kernels the trace
  does not time (the step's kernels that command buffers hold are timed; others may not be) is left out."""
  by_instruction, _, hlo_text = measured_instructions(directory, steps)
  names = instructions(hlo_text)
  kernels = [kernel for kernel in gpu_compile.roofline(gpu_compile.kernels(hlo_text), bandwidth)
             if kernel["instruction"] in by_instruction]
  rows = [{"instruction": kernel["instruction"], "op_name": short_op_name(kernel["op_name"]),
           "category": category(kernel["instruction"], *names[kernel["instruction"]]),
           "kind": kernel["kind"], "bytes": kernel["bytes"], "flops": kernel["flops"],
           "measured_ms": by_instruction[kernel["instruction"]], "roofline_ms": kernel["seconds"] * 1e3}
          for kernel in kernels]
  for row in rows:
    row["excess_ms"] = row["measured_ms"] - row["roofline_ms"]
  by_category = collections.defaultdict(lambda: {"measured_ms": 0.0, "roofline_ms": 0.0, "excess_ms": 0.0})
  for row in rows:
    for key in ("measured_ms", "roofline_ms", "excess_ms"):
      by_category[row["category"]][key] += row[key]
  categories = [{"category": name, **figures} for name, figures in by_category.items()]
  return (sorted(categories, key=lambda row: -row["excess_ms"]), sorted(rows, key=lambda row: -row["excess_ms"]))


def print_against_roofline(directory: str, bandwidth: float, top: int):
  categories, rows = against_roofline(directory, benchmark.PROFILED_STEPS, bandwidth)
  total = {key: sum(row[key] for row in rows) for key in ("measured_ms", "roofline_ms", "excess_ms")}
  print(f"ms per step: measured, roofline (bytes at {bandwidth / 1e12:.1f} TB/s, FLOPs at the dense peak), "
        f"excess; {len(rows)} kernels timed")
  print(f"{total['measured_ms']:9.2f} {total['roofline_ms']:9.2f} {total['excess_ms']:9.2f}  all")
  for row in categories:
    print(f"{row['measured_ms']:9.2f} {row['roofline_ms']:9.2f} {row['excess_ms']:9.2f}  {row['category']}")
  print(f"\n{top} kernels most over their roofline: measured, roofline, excess ms per step; MB moved, GFLOP")
  for row in rows[:top]:
    print(f"{row['measured_ms']:9.3f} {row['roofline_ms']:9.3f} {row['excess_ms']:9.3f} {row['bytes'] / 1e6:9.1f} "
          f"{row['flops'] / 1e9:7.1f}  {row['instruction']} ({row['op_name'][:100]})")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("directory")
  parser.add_argument("--top", type=int, default=15, help="how many of the slowest ops to list")
  parser.add_argument("--roofline", metavar="TARGET", default="",
                      help="a GPU trace: each kernel beside its roofline on the device TARGET describes "
                           f"(e.g. {os.path.relpath(gpu_compile.DEFAULT_TARGET)})")
  args = parser.parse_args()
  if args.roofline:
    print_against_roofline(args.directory, gpu_compile.memory_bandwidth(args.roofline), args.top)
    return
  by_category, by_op = breakdown(args.directory, benchmark.PROFILED_STEPS)
  print(f"ms per step, summed over ops ({sum(by_category.values()):.1f} in all)")
  for name, milliseconds in by_category.most_common():
    print(f"{milliseconds:9.1f}  {name}")
  print(f"\nslowest {args.top} ops, ms per step")
  for name, milliseconds in by_op.most_common(args.top):
    print(f"{milliseconds:9.1f}  {name[:140]}")


if __name__ == "__main__":
  main()
