"""Markdown tables for BENCHMARKS.md from the JSON lines of `python -m fer_jax.benchmark --input=synthetic`.

  python benchmarks/render_table.py RESULTS.jsonl [--reference | --scaling] > table.md

One row per line (other --input modes are skipped), under a header naming the machine and software the
lines were measured on; lines of benchmarks/run_candidates.py (device_session.sh's candidates.jsonl) add a
"variant" column (with the round where there are several); lines of benchmarks/official_step.py in the same
file (accelerator.sh's OFFICIAL) add a table of the official training steps beside fer_jax's rows of the
same method. A results file that does not exist gives a "(no results: …)" table; a line that is not a
JSON object (a run cut short while writing it) is skipped with a warning naming its file and line.
--reference adds the project's measurements of the official PyTorch code on
one H100 (issue 18) beside each method, for a GPU table; --scaling renders the lines of
benchmarks/scaling.py (one config on 1, 2, 4, 8 … devices) with the collectives of each train step.
"""

import argparse
import json
import os
import sys

# img/s of the official code's training step on one H100 at batch 256, by method and input side,
# measured by the project (issue 18): plain fp32, tuned (AMP and the like), torch.compile.
REFERENCE_H100 = {("dan", 224): ("4,179", "8,275–9,399", "7,121"), ("apvit", 112): ("582", "1,538", "2,438"),
                  ("scan_cci", 224): ("1,421", "2,662", "–")}
REFERENCE_HEADER = ["official fp32 (H100, batch 256)", "official tuned (H100)", "official compiled (H100)"]

PAPER_HEADER = ["config", "size", "batch", "dtype", "devices", "train img/s", "train step ms", "eval img/s",
                "compile s (train / eval)", "warm-up s", "train GFLOP/img", "eval GFLOP/img", "train TFLOP/s", "MFU",
                "peak memory GiB", "kept for backward GiB"]


def config_argument(row: dict) -> str:
  """The --config= value of the command that measured `row` (run_candidates.py's lines: their "config")."""
  return next((arg.split("=", 1)[1] for arg in row.get("command", "").split() if arg.startswith("--config=")),
              row.get("config") or row.get("model", "?"))


def _number(value, digits: int = 2) -> str:
  return "–" if value is None else f"{value:,.{digits}f}"


def _gflop_per_image(row: dict, step: str = "train"):
  flops = row.get(f"{step}_flops_per_step")
  return None if flops is None else flops / row["batch_size"] / 1e9


def _memory(row: dict) -> str:
  """GiB; a † marks XLA's planned figure (compiled.memory_analysis) where the device reports none, a ‡ the device's
  peak reached before the train steps (initialisation, compilation), which bounds the step's from above."""
  size = row.get("peak_memory_bytes")
  if size is None:
    return "–"
  if row.get("peak_memory_source") != "device.memory_stats":
    return f"{size / 2**30:.2f} †"
  return f"{size / 2**30:.2f}" + (" ‡" if row.get("peak_memory_before_steps_bytes") == size else "")


def _kept_for_backward(row: dict) -> str:
  size = row.get("train_saved_for_backward_bytes")
  return "–" if size is None else f"{size / 2**30:.2f}"


def _precision(row: dict) -> str:
  """The dtype, and the rematerialisation where there is one (config.model.remat)."""
  remat = row.get("remat", "none")
  return row["dtype"] if remat == "none" else f"{row['dtype']}, remat {remat}"


def _variant(row: dict, rounds: bool) -> str:
  """run_candidates.py's variant ("none": the library as it is), and its round where there are several."""
  variant = row.get("variant", "–")
  return f"{variant}, round {row['round']}" if rounds and "round" in row else variant


def paper_row(row: dict, reference: bool = False, variant: str | None = None) -> list[str]:
  """A line's cells; `variant` (run_candidates.py's lines), the cell after the config."""
  cells = [f"`{config_argument(row)}`", *([] if variant is None else [variant]), f"{row['input_size']}²",
           str(row["batch_size"]), _precision(row),
           str(row["devices"]), _number(row["train_img_per_s"]), _number(row["train_step_ms"], 1),
           _number(row["eval_img_per_s"]), f"{row['train_compile_s']:.1f} / {row['eval_compile_s']:.1f}",
           f"{row['train_warmup_s']:.2f}", _number(_gflop_per_image(row)), _number(_gflop_per_image(row, "eval")),
           _number(row["train_tflops_per_s"], 3),
           "–" if row.get("mfu") is None else f"{row['mfu']:.1%}", _memory(row), _kept_for_backward(row)]
  if reference:
    cells += list(REFERENCE_H100.get((row["model"], row["input_size"]), ("–",) * len(REFERENCE_HEADER)))
  return cells


def machine(rows: list[dict]) -> str:
  """One line naming where the rows were measured (from the first row; differing fields are listed)."""
  first = rows[0]
  cuda = ", ".join(f"{key} {first[key]}" for key in ("cuda_runtime", "cudnn", "cuda_driver", "nvidia_driver")
                   if first.get(key) is not None)
  loads = sorted({row.get("load_average_1m") for row in rows if row.get("load_average_1m") is not None})
  load = f"; 1-min load average before each run {loads[0]:.1f}–{loads[-1]:.1f}" if loads else ""
  counts = sorted({row["devices"] for row in rows})
  devices = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
  cpu_model = f" ({first['host_cpu_model']})" if first.get("host_cpu_model") else ""
  return (f"{devices} × {first['device_kind']} ({first['platform']}, {first.get('host_cpus')} host CPUs{cpu_model}), "
          f"jax {first['jax']} / jaxlib {first['jaxlib']}, backend {first['backend_version']}"
          f"{', ' + cuda if cuda else ''}; {first['date'][:10]}{load}")


def markdown(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def paper_table(rows: list[dict], reference: bool = False) -> str:
  rows = [row for row in rows if row.get("input") == "synthetic"]
  if not rows:
    return "(no synthetic results)"
  header = PAPER_HEADER + (REFERENCE_HEADER if reference else [])
  variants = any("variant" in row for row in rows)  # candidates.jsonl: tell the candidates apart
  rounds = len({row.get("round") for row in rows}) > 1
  if variants:
    header = header[:1] + ["variant"] + header[1:]
  cells = [paper_row(row, reference, _variant(row, rounds) if variants else None) for row in rows]
  note = ("Compilation and warm-up steps are timed apart and not in the img/s figures; FLOPs from XLA's cost "
          "analysis of the step before optimisation (without the recomputation of config.model.remat), MFU "
          "against the device's dense bf16 peak; peak memory: the device's since the process started, read after "
          "the train steps; † as XLA planned it (compiled.memory_analysis), the device reporting none; ‡ reached "
          "before the train steps (initialisation, compilation), the step's own at most that; kept for backward: what "
          "one device's forward pass keeps for the backward pass (jax.vjp's residuals, parameters included), "
          "which config.model.remat lowers.")
  return f"{machine(rows)}\n\n{markdown(header, cells)}\n\n{note}\n"


OFFICIAL_HEADER = ["official step", "variant", "device", "size", "batch", "train img/s", "train step ms", "warm-up s",
                   "framework"]


def official_table(rows: list[dict]) -> str:
  """The official training steps' lines (benchmarks/official_step.py), each with fer_jax's train img/s
  of the same method, size and batch as a multiple of it, per dtype; empty when there are none."""
  official = [row for row in rows if row.get("code") == "official"]
  if not official:
    return ""
  ours = [row for row in rows if row.get("input") == "synthetic"]
  dtypes = sorted({row["dtype"] for row in ours})
  lines = []
  for row in official:
    key = (row["method"], row["input_size"], row["batch_size"])
    same = {mine["dtype"]: mine["train_img_per_s"] for mine in ours
            if (mine["model"], mine["input_size"], mine["batch_size"]) == key}
    ratios = [f"{same[dtype] / row['train_img_per_s']:.2f}×" if dtype in same else "–" for dtype in dtypes]
    lines.append([row["method"], f"{row['variant']} ({row['dtype']})", row["device_kind"], f"{row['input_size']}²",
                  str(row["batch_size"]), _number(row["train_img_per_s"]), _number(row["train_step_ms"], 1),
                  f"{row['warmup_s']:.2f}", row.get("framework") or f"torch {row['torch']}", *ratios])
  header = OFFICIAL_HEADER + [f"fer_jax {dtype} ÷ this" for dtype in dtypes]
  return (f"\nThe official training steps (benchmarks/official_step.py; LHC-Net's Keras step: "
          f"tests/reference/official_lhcnet_keras.py time_step) in the same run:\n\n"
          f"{markdown(header, lines)}\n\n"
          "tuned: bf16 autocast and channels_last; compiled: tuned with the forward pass through torch.compile.\n")


SCALING_HEADER = ["devices", "global batch", "batch per device", "train img/s", "× 1 device", "train step ms",
                  "eval img/s", "train compile s", "collective ops", "BN statistics", "BN backward", "gradients",
                  "loss + metrics"]
ROLES = ("batchnorm_statistics", "batchnorm_backward", "gradients", "loss_and_metrics")


def _collective_cell(role: dict | None) -> str:
  return "–" if not role else f"{role['ops']} / {role['tensors']} / {role['bytes'] / 2**20:,.2f} MiB"


def scaling_row(row: dict, one_device_img_per_s: float | None) -> list[str]:
  found = row.get("train_collectives", {})
  speedup = "–" if not one_device_img_per_s else f"{row['train_img_per_s'] / one_device_img_per_s:.2f}"
  return [str(row["devices"]), str(row["batch_size"]), f"{row['batch_size'] / row['devices']:g}",
          _number(row["train_img_per_s"]), speedup, _number(row["train_step_ms"], 1), _number(row["eval_img_per_s"]),
          f"{row['train_compile_s']:.1f}", str(sum(found.get("ops", {}).values())),
          *(_collective_cell(found.get("by_role", {}).get(role)) for role in ROLES)]


def scaling_table(rows: list[dict]) -> str:
  rows = sorted((row for row in rows if row.get("input") == "synthetic"), key=lambda row: row["devices"])
  if not rows:
    return "(no synthetic results)"
  one = next((row["train_img_per_s"] for row in rows if row["devices"] == 1), None)
  note = ("Collectives of the compiled train step, by what they reduce: ops / operand tensors / bytes per "
          "device and step (XLA combines tensors into fewer ops; an op carrying several kinds counts in each).")
  return (f"`{config_argument(rows[0])}`, {rows[0]['input_size']}², {rows[0]['dtype']}; {machine(rows)}\n\n"
          f"{markdown(SCALING_HEADER, [scaling_row(row, one) for row in rows])}\n\n{note}\n")


def read_lines(path: str) -> list[dict]:
  """The JSON objects of a file's lines; a line that is not one (cut short) is skipped with a warning."""
  rows = []
  with open(path, encoding="utf-8") as lines:
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        problem = "" if isinstance(row, dict) else f"a JSON {type(row).__name__}"
      except json.JSONDecodeError as error:
        problem = error.msg
      if problem:
        print(f"render_table.py: {path}:{number}: skipped, not a JSON object ({problem}; a run cut short?)",
              file=sys.stderr)
      else:
        rows.append(row)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("results", help="JSON lines of fer_jax.benchmark")
  parser.add_argument("--reference", action="store_true", help="add the official code's H100 figures")
  parser.add_argument("--scaling", action="store_true", help="a device-count table (benchmarks/scaling.py)")
  args = parser.parse_args()
  if not os.path.isfile(args.results):
    state = "is not a file" if os.path.exists(args.results) else "does not exist"
    sys.stdout.write(f"(no results: {args.results} {state}; every run failed or none ran: see their logs)\n")
    return
  rows = read_lines(args.results)
  sys.stdout.write(scaling_table(rows) if args.scaling else paper_table(rows, args.reference) + official_table(rows))


if __name__ == "__main__":
  main()
