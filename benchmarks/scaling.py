r"""Train and eval speed of one config on 1, 2, 4, 8 … devices, with the cross-device reductions of each
compiled train step, one process (a fresh XLA client) per device count.

  python benchmarks/scaling.py --config=configs/dan.py:synthetic --out=DIR [--devices=1,2,4,8] \
      [--batch_size=32 [--per_device]] [--platform=cpu|gpu] [--steps=8] [--warmup=2] [fer_jax.benchmark flags]

→ DIR/scaling.jsonl (the lines of `fer_jax.benchmark --input=synthetic`) and DIR/scaling.md.
--batch_size is the global batch, the same for every device count (strong scaling); with --per_device
it is each device's share, the global batch growing with the devices (weak scaling).
--platform=cpu makes N fake XLA CPU devices (--xla_force_host_platform_device_count): they share the
host's cores, so the speed shows the cost of partitioning and of the collectives, not a speed-up.
--platform=gpu shows the first N GPUs (CUDA_VISIBLE_DEVICES).
"""

import argparse
import os
import pathlib
import subprocess
import sys

import render_table

ROOT = pathlib.Path(__file__).resolve().parent.parent


def device_environment(platform: str, devices: int) -> dict:
  environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
  if platform == "cpu":
    flags = environment.get("XLA_FLAGS", "")
    return {**environment, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip()}
  return {**environment, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(devices))}


def run(args, devices: int, output: pathlib.Path) -> None:
  batch_size = args.batch_size * devices if args.per_device else args.batch_size
  command = [sys.executable, "-m", "fer_jax.benchmark", f"--config={args.config}", "--input=synthetic",
             f"--config.batch_size={batch_size}", f"--steps={args.steps}", f"--warmup={args.warmup}",
             f"--output={output}", *args.overrides]
  print(f"{devices} devices: {' '.join(command[2:])}", file=sys.stderr)
  subprocess.run(command, env=device_environment(args.platform, devices), cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--per_device", action="store_true", help="--batch_size per device, not global")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  args, args.overrides = parser.parse_known_args()  # the rest go to fer_jax.benchmark, e.g. --config.model.dtype=…
  args.out.mkdir(parents=True, exist_ok=True)
  output = args.out / "scaling.jsonl"
  output.unlink(missing_ok=True)
  for devices in (int(n) for n in args.devices.split(",")):
    run(args, devices, output)
  table = render_table.scaling_table(render_table.read_lines(output))
  (args.out / "scaling.md").write_text(table)
  print(table)


if __name__ == "__main__":
  main()
