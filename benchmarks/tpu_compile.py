"""Each method's train step compiled for a TPU on a machine without one: the TPU compiler's estimate.

  python benchmarks/tpu_compile.py [CONFIG ...] [--dtype=bfloat16] [--topology=v5e:2x2] [--devices=1]
      [--batch_size=B] [--output=FILE.jsonl] [--hlo_dir=DIR]

Needs libtpu (`pip install -e . "jax[tpu]==JAX_VERSION"` in a virtual environment of its own), not a
TPU: JAX's compile-only TPU devices of --topology let XLA's TPU compiler build the step for --devices
chips as it would on them. For each config (default: every method's paper config at its paper batch
size): the compiler's own estimate of each kernel's cycles (the `estimated_cycles` it writes into the
kernels of the compiled program), summed into a step time at the chip's clock, hence images a second
and MFU; the same by kind of kernel, cost model and model module; the kernels it gives no estimate,
with the least time their bytes take; the estimate of kernels in loops or conditionals, apart; XLA's
cost analysis (FLOPs, bytes accessed) and its roofline; planned memory against the chip's HBM;
collectives. Prints a markdown table; --hlo_dir keeps the HLO. A compiler's estimate, not a measurement.
"""

import collections
import importlib.metadata
import importlib.util
import os
import re
import sys

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX starts a backend: compiling for a TPU needs none
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is held: let several compiles run at once
import jax  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_compile  # noqa: E402  pylint: disable=wrong-import-position  # its HLO text parsing
from common import compiled_train_steps, paper_configs_parser, write_rows  # noqa: E402  pylint: disable=wrong-import-position

from fer_jax import benchmark  # noqa: E402  pylint: disable=wrong-import-position

# Google's figures for a chip (cloud.google.com/tpu/docs/v5e): dense bf16 peak, HBM bandwidth and size.
# The clock is the peak over what the TensorCore's four 128×128 MXUs do a cycle (2 FLOP a cell).
TPU_CHIPS = {"TPU v5 lite": {"peak_flops": 197e12, "hbm_bandwidth": 819e9, "hbm_bytes": 16e9,
                             "clock_hz": 197e12 / (4 * 128 * 128 * 2)}}
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_OP = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (.*?) ([a-z][\w\-]*)\(([^)]*)\)")


def tpu_devices(topology: str, count: int) -> list:
  """`count` compile-only chips of TPU `topology` (e.g. "v5e:2x2"; libtpu's names)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("libtpu") is None:
    raise SystemExit(f"Compiling for a TPU needs libtpu: pip install \"jax[tpu]=={jax.__version__}\"")
  try:
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
  except Exception as error:  # pylint: disable=broad-exception-caught  # libtpu's own error types vary
    raise SystemExit(f"--topology={topology}: libtpu gives no such TPU slice ({error})") from error
  if count > len(devices):
    raise SystemExit(f"--devices={count}: topology {topology} has {len(devices)} chips; pass a larger one (v5e:2x4)")
  if devices[0].device_kind not in TPU_CHIPS:
    raise SystemExit(f"No figures for {devices[0].device_kind!r}: add its peak, bandwidth, HBM and clock to "
                     "TPU_CHIPS")
  return devices[:count]


ELEMENTWISE = frozenset({"abs", "add", "compare", "convert", "divide", "exponential", "log", "maximum", "minimum",
                         "multiply", "negate", "rsqrt", "select", "sqrt", "subtract", "tanh"})
NOT_KERNELS = frozenset({"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all"})


def kernel_kind(op: str, body: str) -> str:
  """What a kernel of the entry computation does, from its op and (for a fusion) its computation's text.
  (The TPU compiler turns dots into convolutions, so "convolution" holds the matrix products too.)"""
  if op == "fusion":
    return ("convolution" if " convolution(" in body else
            "reduction" if re.search(r" (?:reduce|reduce-window|select-and-scatter)\(", body) else "elementwise")
  if op == "convolution":
    return "convolution"
  if op in ("reduce", "reduce-window", "select-and-scatter"):
    return "reduction"
  if op.startswith(("all-", "reduce-scatter", "collective-permute")):
    return "collective"
  if op.startswith(("copy", "transpose")):
    return "copy"
  return "elementwise" if op in ELEMENTWISE else "other"


def kernels(hlo_text: str) -> list[dict]:
  """The kernels of a compiled TPU program's entry computation: op, kind, the compiler's estimated cycles
  (None where it gives none: collectives, sorts, select-and-scatter, custom calls), its cost model, the
  bytes of its operands and result, and the JAX op name (a fusion without one: its computation's last).
  Async pairs (`*-start`, `*-done`) are data movement beside the kernels, and a ConcatBitcast joins
  their slices in place: both are left out."""
  bodies = dict(gpu_compile.COMPUTATION.findall(hlo_text))
  entry = bodies[re.search(r"^ENTRY (%[\w.\-]+)", hlo_text, re.MULTILINE).group(1)]
  shapes, found = {}, []
  for line in entry.splitlines():
    match = _OP.match(line)
    if not match:
      continue
    name, shape, op, operand_text = match.groups()
    shapes[name] = shape
    if op in NOT_KERNELS or op.endswith(("-start", "-done")) or 'custom_call_target="ConcatBitcast"' in line:
      continue
    cycles, model = _CYCLES.search(line), re.search(r'"cost_model_type":"COST_MODEL_TYPE_(\w+)"', line)
    called = re.search(r"calls=(%[\w.\-]+)", line)
    body = gpu_compile.reachable(called.group(1), bodies) if called else ""
    named = re.findall(r'op_name="([^"]+)"', line) or re.findall(r'op_name="([^"]+)"', body)
    operands = [shapes[word] for word in re.findall(r"%[\w.\-]+", operand_text) if word in shapes]
    found.append({"op": op, "kind": kernel_kind(op, body), "cycles": int(cycles.group(1)) if cycles else None,
                  "cost_model": model.group(1) if model else "", "op_name": named[-1] if named else "",
                  "bytes": benchmark.shape_bytes(shape) + sum(map(benchmark.shape_bytes, operands))})
  return found


def cycles_outside_entry(hlo_text: str) -> int:
  """The estimated cycles of kernels in computations the entry calls as a loop or a conditional (a branch
  of `cond` in fast_ops.max_pool's tap gradient): how many times they run is not in the program's text."""
  entry = re.search(r"^ENTRY .*?\{\n(.*?)\n\}", hlo_text, re.MULTILINE | re.DOTALL).group(1)
  return sum(map(int, _CYCLES.findall(hlo_text))) - sum(map(int, _CYCLES.findall(entry)))


def summarise(spec: str, config, compiled, compile_seconds: float, devices: list) -> dict:
  """One JSON line: the entry's estimated kernels' milliseconds by kind, cost model and module; the
  kernels without an estimate by op, with the least time their bytes take at HBM bandwidth (collectives
  apart: their bytes cross the chips' links); the estimate of kernels in loops or conditionals, apart;
  XLA's cost analysis and planned memory."""
  chip = TPU_CHIPS[devices[0].device_kind]
  hlo_text = compiled.as_text()
  found = kernels(hlo_text)
  estimated = [kernel for kernel in found if kernel["cycles"] is not None]
  unestimated = [kernel for kernel in found if kernel["cycles"] is None and kernel["kind"] != "collective"]
  by_kind = collections.defaultdict(lambda: {"kernels": 0, "ms": 0.0})
  by_cost_model, by_module = collections.defaultdict(float), collections.defaultdict(float)
  for kernel in estimated:
    ms = kernel["cycles"] / chip["clock_hz"] * 1e3
    by_kind[kernel["kind"]]["kernels"] += 1
    by_kind[kernel["kind"]]["ms"] += ms
    by_cost_model[kernel["cost_model"]] += ms
    by_module[benchmark.module_path(kernel["op_name"]) or "step"] += ms
  without = collections.defaultdict(lambda: {"kernels": 0, "bytes": 0})
  for kernel in unestimated:
    without[kernel["op"]]["kernels"] += 1
    without[kernel["op"]]["bytes"] += kernel["bytes"]
  step_ms = sum(by_kind[kind]["ms"] for kind in by_kind)
  cost = compiled.cost_analysis()
  flops, accessed = cost["flops"], cost["bytes accessed"]
  memory = benchmark.memory_analysis(compiled)
  return {
      "config": spec, "model": config.model.name, "input_size": config.input.size, "batch_size": config.batch_size,
      "dtype": config.model.dtype, "device_kind": devices[0].device_kind, "devices": len(devices),
      "jax": jax.__version__, "libtpu": _version("libtpu"), "compile_s": round(compile_seconds, 1),
      "kernels": len(estimated), "by_kind": dict(sorted(by_kind.items())),
      "estimated_step_ms": step_ms, "estimated_img_per_s": config.batch_size / step_ms * 1e3,
      "estimated_mfu": flops / (step_ms * 1e-3 * chip["peak_flops"]),
      "estimated_ms_by_cost_model": dict(by_cost_model),
      "estimated_modules_ms": dict(sorted(by_module.items(), key=lambda item: -item[1])),
      "unestimated": dict(sorted(without.items())),
      "unestimated_floor_ms": sum(kernel["bytes"] for kernel in unestimated) / chip["hbm_bandwidth"] * 1e3,
      "outside_entry_ms": cycles_outside_entry(hlo_text) / chip["clock_hz"] * 1e3,
      "xla_flops": flops, "xla_bytes_accessed": accessed,
      "roofline_step_ms": max(flops / chip["peak_flops"], accessed / chip["hbm_bandwidth"]) * 1e3,
      "planned_peak_bytes": benchmark.planned_peak_bytes(memory), "hbm_bytes": chip["hbm_bytes"],
      "memory_analysis": memory,
      "collectives": gpu_compile.collective_ops(hlo_text) if len(devices) > 1 else None}


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:  # libtpu under another name (libtpu-nightly)
    return "unknown"


def table(rows: list[dict]) -> str:
  lines = ["| config | size | batch | dtype | chips | kernels "
           "| estimated ms (conv / reduction / elementwise / other) | + unestimated, at least ms | ≈ img/s | MFU "
           "| roofline ms | planned peak GB of HBM |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    kinds = row["by_kind"]
    ms = lambda kind: kinds.get(kind, {}).get("ms", 0.0)  # noqa: E731
    other = sum(value["ms"] for kind, value in kinds.items() if kind not in ("convolution", "reduction", "elementwise"))
    lines.append(
        f"| `{row['config']}` | {row['input_size']}² | {row['batch_size']} | {row['dtype']} | {row['devices']} "
        f"| {row['kernels']} | {row['estimated_step_ms']:.1f} ({ms('convolution'):.1f} / {ms('reduction'):.1f} / "
        f"{ms('elementwise'):.1f} / {other:.1f}) | {row['unestimated_floor_ms']:.1f} "
        f"| {row['estimated_img_per_s']:,.0f} | {row['estimated_mfu']:.0%} | {row['roofline_step_ms']:.1f} "
        f"| {row['planned_peak_bytes'] / 1e9:.1f} of {row['hbm_bytes'] / 1e9:.0f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = paper_configs_parser(__doc__.split("\n")[0])
  parser.add_argument("--topology", default="v5e:2x2", help="libtpu's name of a TPU slice to take chips from")
  parser.add_argument("--devices", type=int, default=1, help="chips the batch is split over")
  parser.add_argument("--hlo_dir", default="", help="write each compiled step's HLO text here")
  args = parser.parse_args()
  devices = tpu_devices(args.topology, args.devices)
  rows = []
  for compiled in compiled_train_steps(args.configs, args.dtype, args.batch_size, devices, args.hlo_dir, "tpu"):
    rows.append(summarise(*compiled, devices))
    write_rows(rows[-1:], args.output, "")  # each line as it comes: a config compiles for minutes
  sys.stdout.write(table(rows))


if __name__ == "__main__":
  main()
