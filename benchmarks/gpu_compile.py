"""Each method's train step compiled for a GPU on a machine without one: its kernels and a roofline.

  python benchmarks/gpu_compile.py [CONFIG ...] [--dtype=bfloat16] [--target=benchmarks/gpu_targets/h200.txtpb]
      [--devices=1] [--batch_size=B] [--output=FILE.jsonl] [--hlo_dir=DIR]

Needs JAX's CUDA plugin (`pip install "jax-cuda12-plugin[with-cuda]==$(python -c 'import jax;
print(jax.__version__)')"`), not a GPU: XLA's GPU compiler builds the step for the device that
--target describes (a GpuTargetConfigProto: compute capability, SMs, bandwidth, memory) as it would
on that device, cuDNN convolutions and Triton GEMMs included, without autotuning (which needs the
device). For each config (default: every method's paper config at its paper batch size), from the
optimised HLO: the kernels one step launches by kind, the bytes each reads and writes (its operands'
and results' shapes; an elementwise fusion reads at most an element of each operand per element it
writes), the FLOPs of the convolutions and GEMMs (cuDNN's fused attention among them), and a roofline,
each kernel's max(bytes / memory bandwidth, FLOPs / dense peak) summed: a lower bound on the step's
time on that device, hence an upper bound on its images a second, and where its time must go. From the
PTX XLA writes for the step, each loop fusion's instruction issue is estimated too (its warps × its
instructions over the GPU's issue rate; every branch counted): `with_issue_step_ms` sums max(roofline,
issue) a kernel, which caught the max pool gradient's index arithmetic that the bytes miss. Also XLA's
planned memory and the collectives between --devices devices. Prints a markdown table; --hlo_dir keeps the
HLO. Figures here are the compiler's plan, not a measurement: benchmarks/accelerator.sh measures.
"""

import collections
import contextlib
import glob
import math
import os
import re
import shutil
import sys
import tempfile

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX starts a backend: compiling for a GPU needs none
import jax  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import compiled_train_steps, paper_configs_parser, write_rows  # noqa: E402  pylint: disable=wrong-import-position

from fer_jax import benchmark  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets", "h200.txtpb")
# Dense peaks of Hopper (H100 SXM, H200) in FLOP/s by a kernel's output dtype: float32 products run
# as TF32, XLA's default on GPUs.
HOPPER_PEAK_FLOPS = {"bf16": 989e12, "f16": 989e12, "f32": 494e12}
NOT_KERNELS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all"}
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "all-reduce-start", "all-gather-start", "collective-permute-start"}
WARP_SIZE = 32  # threads, every NVIDIA GPU's
ATTENTION_PREFIX = "__cudnn$fmha"  # cuDNN's fused attention, counted with the GEMMs
GEMM_KINDS = ("__triton_gemm", "__triton_nested_gemm_fusion", "__cudnn$fusion", "__cublas$gemm",
              "__cublas$lt$matmul")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)$")
COMPUTATION = re.compile(r"^(?:ENTRY )?(%[\w.\-]+) \(.*?\{\n(.*?)\n\}", re.MULTILINE | re.DOTALL)


def gpu_devices(target_path: str, count: int) -> list:
  """`count` compile-only devices of the GPU that the GpuTargetConfigProto text at `target_path` describes."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  with open(target_path, encoding="utf-8") as file:
    target = file.read()
  try:
    return topologies.get_topology_desc("target", "cuda", target_config=target, topology=f"1x1x{count}").devices
  except Exception as error:  # pylint: disable=broad-exception-caught  # the plugin's own error types vary
    raise SystemExit(f"Compiling for a GPU needs JAX's CUDA plugin: pip install "
                     f"\"jax-cuda12-plugin[with-cuda]=={jax.__version__}\" ({error})") from error


def memory_bandwidth(target_path: str) -> float:
  """Bytes a second, as the target config states."""
  with open(target_path, encoding="utf-8") as file:
    return float(re.search(r"memory_bandwidth:\s*(\d+)", file.read()).group(1))


def _dims(shape_text: str) -> list[int]:
  """The dimensions of an HLO shape's first array ("bf16[8,56,56,64]{3,2,1,0}" → [8, 56, 56, 64])."""
  return [int(d) for d in benchmark.HLO_SHAPE.search(shape_text).group(2).split(",") if d]


def convolution_flops(result: str, operands: list[str], target: str, dim_labels: str) -> float:
  """2 × the forward output's elements × the kernel's taps × input features: cuDNN's forward, input
  gradient and kernel gradient calls each do a forward convolution's products. dim_labels names
  the forward convolution's input, kernel and output dimensions ("b01f_o01i->b01f")."""
  kernel_labels = dim_labels.split("_")[1].split("->")[0]
  if target == "__cudnn$convBackwardFilter":
    kernel, forward_output = result, operands[1]
  elif target == "__cudnn$convBackwardInput":
    kernel, forward_output = operands[1], operands[0]
  else:
    kernel, forward_output = operands[1], result
  kernel_dims = _dims(kernel)
  taps = math.prod(size for label, size in zip(kernel_labels, kernel_dims) if label.isdigit())
  return 2.0 * math.prod(_dims(forward_output)) * taps * kernel_dims[kernel_labels.index("i")]


def dot_flops(body: str) -> float:
  """2 × result elements × contracted size of each dot in a computation's text."""
  flops = 0.0
  matches = [match for match in map(_INSTRUCTION.match, body.splitlines()) if match]
  shapes = {match.group(1): match.group(2) for match in matches}
  for match in matches:
    if match.group(3) != "dot":
      continue
    lhs = _dims(shapes[match.group(4).split(",")[0].strip()])
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", match.group(5)).group(1)
    flops += 2.0 * math.prod(_dims(match.group(2))) * math.prod(lhs[int(d)] for d in contracting.split(",") if d)
  return flops


def library_gemm_flops(result: str, operands: list[str], attributes: str) -> float:
  """2 × result elements × contracted size of a cuBLAS call, whose dimensions are in its backend config."""
  contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', attributes)
  lhs = _dims(operands[0])
  contracted = math.prod(lhs[int(d.strip('"'))] for d in contracting.group(1).split(",") if d) if contracting else 0
  return 2.0 * math.prod(_dims(result)) * contracted


def _outputs(shape_text: str) -> str:
  """A library call's result less its workspace, the last array when it is u8 (cuDNN) or s8 (cuBLAS)."""
  arrays = [found.group(0) for found in benchmark.HLO_SHAPE.finditer(shape_text)]
  if len(arrays) > 1 and arrays[-1].startswith(("u8[", "s8[")):
    arrays = arrays[:-1]
  return ", ".join(arrays) or shape_text


def reachable(name: str, bodies: dict) -> str:
  """The text of computation `name` and of every computation it calls."""
  seen, stack, text = set(), [name], []
  while stack:
    current = stack.pop()
    if current in seen or current not in bodies:
      continue
    seen.add(current)
    text.append(bodies[current])
    stack += re.findall(r"(?:calls|to_apply)=(%[\w.\-]+)", bodies[current])
  return "\n".join(text)


def attention_flops(operands: list[str], target: str, attributes: str) -> float:
  """cuDNN's fused (flash) attention: 2 × the [B, heads, T, S] logits' elements (the backend config's
  intermediate_tensor_shape) × the head dim, a product; the forward pass takes two (q·kᵀ and p·v), the
  backward five (q·kᵀ again, then dv, dp, dq and dk)."""
  logits = re.search(r'"intermediate_tensor_shape":\s*\{"element_type":\s*"\w+",\s*"dimensions":\s*\[([^\]]*)\]',
                     attributes)
  if not logits:
    raise ValueError(f"{target} without the logits' shape (intermediate_tensor_shape) in its backend config")
  elements = math.prod(int(d.strip(' "')) for d in logits.group(1).split(",") if d.strip())
  return (5 if target.endswith("Backward") else 2) * 2.0 * elements * _dims(operands[0])[-1]


def custom_call_target(attributes: str) -> str:
  found = re.search(r'custom_call_target="([^"]+)"', attributes)
  return found.group(1) if found else ""


def kernel_kind(op: str, attributes: str) -> str:
  if op == "custom-call":
    target = custom_call_target(attributes)
    return ("convolution" if target.startswith("__cudnn$conv") else
            "gemm" if target in GEMM_KINDS or target.startswith(ATTENTION_PREFIX) else "other")
  if op == "fusion":
    backend = re.search(r'"kind":"([^"]+)"', attributes)
    if backend and backend.group(1) in GEMM_KINDS:
      return "gemm"
    return {"kInput": "reduction", "kLoop": "elementwise"}.get(re.search(r"kind=(\w+)", attributes).group(1), "other")
  if op in COLLECTIVES:
    return "collective"
  return "copy" if op in ("copy", "transpose") else "other"


def _elements(shape_text: str) -> list[int]:
  return [math.prod(int(d) for d in dims.split(",") if d) for _, dims in benchmark.HLO_SHAPE.findall(shape_text)]


def read_bytes(kind: str, operands: list[str], written: str, body: str) -> int:
  """Bytes a kernel reads: its operands whole, but an elementwise fusion (`body` its computation's text)
  or a copy reads at most one element of an operand per element it writes (a slice of q out of a qkv
  product reads a third of it), unless a window reduction (a max pool) reads several."""
  if kind not in ("elementwise", "copy") or " reduce-window(" in body:
    return sum(map(benchmark.shape_bytes, operands))
  most = max(_elements(written), default=0)
  return sum(min(benchmark.shape_bytes(operand), most * benchmark.shape_bytes(operand) // max(sum(_elements(operand)), 1))
             for operand in operands)


def kernels(hlo_text: str) -> list[dict]:
  """The kernels of a compiled GPU program's entry computation, in order: kind, bytes read and written,
  FLOPs (convolutions, GEMMs, fused attention), result dtype and the JAX op name."""
  bodies = dict(COMPUTATION.findall(hlo_text))
  entry = bodies[re.search(r"^ENTRY (%[\w.\-]+)", hlo_text, re.MULTILINE).group(1)]
  shapes, found = {}, []
  for line in entry.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, op, operand_text, attributes = match.groups()
    shapes[name] = shape
    if op in NOT_KERNELS or op.endswith("-done"):
      continue
    operands = [shapes[word] for word in re.findall(r"%[\w.\-]+", operand_text) if word in shapes]
    kind = kernel_kind(op, attributes)
    called = re.search(r"calls=(%[\w.\-]+)", attributes)
    body = reachable(called.group(1), bodies) if called else ""
    written = _outputs(shape) if op == "custom-call" else shape
    flops = 0.0
    target = custom_call_target(attributes) if op == "custom-call" else ""
    if kind == "convolution":
      flops = convolution_flops(written, operands, target, re.search(r"dim_labels=([\w>-]+)", attributes).group(1))
    elif target.startswith(ATTENTION_PREFIX):
      flops = attention_flops(operands, target, attributes)
    elif kind == "gemm":
      flops = dot_flops(body) if called else library_gemm_flops(written, operands, attributes)
    # A fusion XLA made may carry no name of its own: then its computation's last op's.
    named = re.findall(r'op_name="([^"]+)"', attributes) or re.findall(r'op_name="([^"]+)"', bodies.get(
        called.group(1) if called else "", ""))
    kernel = re.search(r'deduplicated_name="([^"]+)"', attributes)  # identical fusions share one kernel
    dtype = benchmark.HLO_SHAPE.search(written)
    found.append({"instruction": name[1:], "kernel": kernel.group(1) if kernel else name[1:], "kind": kind,
                  "bytes": read_bytes(kind, operands, written, body) + benchmark.shape_bytes(written),
                  "flops": flops, "written": written, "dtype": dtype.group(1) if dtype else "",
                  "op_name": named[-1] if named else ""})
  return found


@contextlib.contextmanager
def dumped_ptx():
  """A temporary folder, removed on exit, into which XLA writes the PTX of each train step it compiles
  from now on (enter before the process's first compile: XLA reads its flags once)."""
  with tempfile.TemporaryDirectory(prefix="gpu_compile_ptx_") as folder:
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={folder} "
                               "--xla_dump_hlo_module_re=train_step")
    yield folder


def take_ptx(folder: str) -> str:
  """The PTX text dumped into `folder` since the last call, which empties it."""
  text = "".join(open(path, encoding="utf-8").read() for path in sorted(glob.glob(os.path.join(folder, "*.ptx"))))
  for path in os.listdir(folder):
    (shutil.rmtree if os.path.isdir(os.path.join(folder, path)) else os.remove)(os.path.join(folder, path))
  return text


def ptx_kernels(ptx_text: str) -> dict[str, tuple[int, int]]:
  """{kernel: (its PTX instructions, elements a thread writes: its widest vector store)}."""
  found = {}
  for name, body in re.findall(r"\.entry (\w+)\((.*?)\n\}", ptx_text, re.DOTALL):
    instructions = sum(1 for line in body.splitlines() if re.match(r"\s+[@a-z]", line))
    found[name] = (instructions, max(map(int, re.findall(r"st\.global\.v(\d)", body)), default=1))
  return found


def issue_rate(target_path: str) -> float:
  """Warp instructions the GPU issues a second: SMs × schedulers (FP32 lanes over the warp size) × clock."""
  with open(target_path, encoding="utf-8") as file:
    target = file.read()
  get = lambda key: float(re.search(rf"{key}:\s*([\d.]+)", target).group(1))  # noqa: E731
  return get("core_count") * get("fpus_per_core") / WARP_SIZE * get("clock_rate_ghz") * 1e9


def with_issue(found: list[dict], ptx: dict, rate: float) -> list[dict]:
  """Each loop fusion (elementwise kernel) with `issue_seconds`: its warps × its PTX instructions over
  the issue rate. A loop fusion's thread runs its code once, without loops, so this counts every
  instruction of every branch: an estimate, not a bound, for kernels whose index arithmetic takes the
  time rather than their bytes (a max pool's taps: BENCHMARKS.md, "One H200, measured")."""
  timed = []
  for kernel in found:
    entry = ptx.get(kernel["kernel"].replace(".", "_")) if kernel["kind"] == "elementwise" else None
    if entry:
      instructions, width = entry
      warps = math.ceil(max(_elements(kernel["written"]), default=0) / width / WARP_SIZE)
      kernel = {**kernel, "issue_seconds": warps * instructions / rate}
    timed.append(kernel)
  return timed


def roofline(found: list[dict], bandwidth: float) -> list[dict]:
  """Each kernel with its roofline seconds: max(bytes / bandwidth, FLOPs / peak of its dtype); 0 for
  collectives, whose bytes cross NVLink or the network, not memory (their bytes are in the summary)."""
  def seconds(kernel):
    if kernel["kind"] == "collective":
      return 0.0
    return max(kernel["bytes"] / bandwidth,
               kernel["flops"] / HOPPER_PEAK_FLOPS.get(kernel["dtype"], HOPPER_PEAK_FLOPS["f32"]))
  return [{**kernel, "seconds": seconds(kernel)} for kernel in found]


def summarise(spec: str, config, compiled, compile_seconds: float, devices: list, bandwidth: float,
              ptx_text: str = "", rate: float = 0.0, top: int = 12) -> dict:
  hlo_text = compiled.as_text()
  timed = roofline(with_issue(kernels(hlo_text), ptx_kernels(ptx_text), rate), bandwidth)
  by_kind = collections.defaultdict(lambda: {"kernels": 0, "bytes": 0, "flops": 0.0, "seconds": 0.0})
  by_module = collections.defaultdict(float)
  for kernel in timed:
    for key in ("bytes", "flops", "seconds"):
      by_kind[kernel["kind"]][key] += kernel[key]
    by_kind[kernel["kind"]]["kernels"] += 1
    by_module[benchmark.module_path(kernel["op_name"]) or "step"] += kernel["seconds"]
  seconds = sum(kernel["seconds"] for kernel in timed)
  with_issue_seconds = sum(max(kernel["seconds"], kernel.get("issue_seconds", 0.0)) for kernel in timed)
  issue_bound = sorted((kernel for kernel in timed if kernel.get("issue_seconds", 0.0) > kernel["seconds"]),
                       key=lambda kernel: kernel["seconds"] - kernel["issue_seconds"])[:5]
  memory = benchmark.memory_analysis(compiled)
  return {
      "config": spec, "model": config.model.name, "input_size": config.input.size, "batch_size": config.batch_size,
      "dtype": config.model.dtype, "device_kind": devices[0].device_kind, "devices": len(devices),
      "jax": jax.__version__, "compile_s": round(compile_seconds, 1), "kernels": len(timed),
      "by_kind": dict(sorted(by_kind.items())),
      "roofline_step_ms": seconds * 1e3, "roofline_img_per_s": config.batch_size / seconds,
      "with_issue_step_ms": with_issue_seconds * 1e3 if ptx_text else None,
      "issue_bound_kernels": [{"instruction": kernel["instruction"], "op_name": kernel["op_name"],
                               "roofline_ms": kernel["seconds"] * 1e3, "issue_ms": kernel["issue_seconds"] * 1e3}
                              for kernel in issue_bound],
      "roofline_top_level_modules_ms": dict(sorted(((name, value * 1e3) for name, value in by_module.items()),
                                                   key=lambda item: -item[1])[:top]),
      "planned_peak_bytes": benchmark.planned_peak_bytes(memory), "memory_analysis": memory,
      "collectives": collective_ops(hlo_text) if len(devices) > 1 else None}


def collective_ops(hlo_text: str) -> dict:
  """A compiled step's cross-device ops and bytes per device (GPU or TPU HLO). Not by role: XLA's GPU
  passes name combined gradient all-reduces after the optimiser's ops, which
  benchmark.collective_role cannot attribute."""
  found = benchmark.collectives(hlo_text, set())
  return {"ops": found["ops"], "bytes": found["bytes"]}


def table(rows: list[dict]) -> str:
  lines = ["| config | size | batch | dtype | kernels (conv / GEMM / reduction / elementwise / other) "
           "| conv+GEMM TFLOP | other GB | roofline ms (conv+GEMM / rest) | ≤ img/s | with issue ms | planned peak GiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    kinds = row["by_kind"]
    get = lambda kind, key: kinds.get(kind, {}).get(key, 0)  # noqa: E731
    products = ("convolution", "gemm")
    rest = [kind for kind in kinds if kind not in products]
    counts = " / ".join(str(get(kind, "kernels")) for kind in ("convolution", "gemm", "reduction", "elementwise"))
    counts += f" / {sum(get(kind, 'kernels') for kind in rest if kind not in ('reduction', 'elementwise'))}"
    lines.append(
        f"| `{row['config']}` | {row['input_size']}² | {row['batch_size']} | {row['dtype']} | {counts} "
        f"| {sum(get(k, 'flops') for k in products) / 1e12:.2f} | {sum(get(k, 'bytes') for k in rest) / 1e9:.2f} "
        f"| {row['roofline_step_ms']:.2f} ({sum(get(k, 'seconds') for k in products) * 1e3:.2f} / "
        f"{sum(get(k, 'seconds') for k in rest) * 1e3:.2f}) | {row['roofline_img_per_s']:,.0f} "
        f"| {'–' if row.get('with_issue_step_ms') is None else format(row['with_issue_step_ms'], '.2f')} "
        f"| {row['planned_peak_bytes'] / 2**30:.1f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = paper_configs_parser(__doc__.split("\n")[0])
  parser.add_argument("--target", default=DEFAULT_TARGET, help="GpuTargetConfigProto text of the GPU")
  parser.add_argument("--devices", type=int, default=1, help="GPUs the batch is split over")
  parser.add_argument("--hlo_dir", default="", help="write each compiled step's HLO text here")
  args = parser.parse_args()
  devices, bandwidth, rate = gpu_devices(args.target, args.devices), memory_bandwidth(args.target), issue_rate(args.target)
  with dumped_ptx() as ptx_dir:
    rows = [summarise(*compiled, devices, bandwidth, take_ptx(ptx_dir), rate)
            for compiled in compiled_train_steps(args.configs, args.dtype, args.batch_size, devices, args.hlo_dir, "gpu")]
  write_rows(rows, args.output, table(rows))


if __name__ == "__main__":
  main()
