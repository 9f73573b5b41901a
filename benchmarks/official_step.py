"""The official training step of DAN, SCAN-CCI or APViT timed on random inputs, to set beside
`python -m fer_jax.benchmark --config=configs/METHOD.py:rafdb --input=synthetic` on the same machine.

Needs a clone of the official repository (imported from there, not copied):
  git clone https://github.com/yaoing/DAN /tmp/DAN
  git clone https://github.com/1980x/SCAN-CCI-FER /tmp/SCAN-CCI-FER
  git clone https://github.com/youqingxiaozhua/APViT /tmp/APViT
  python benchmarks/official_step.py --method=dan --official=/tmp/DAN [--batch=16] [--size=224]
      [--steps=8] [--warmup=2] [--device=cuda] [--variant=fp32|tuned|compiled] [--packages=DIR]

APViT's code needs mmcv 1.x (pure Python without its compiled ops; its setup.py needs a setuptools
that still has pkg_resources, and `wheel`), installed into a folder that --packages puts on the import path:
  pip install --target /tmp/mmcv1 --no-deps --no-build-isolation mmcv==1.7.2 addict yapf platformdirs
  python benchmarks/official_step.py --method=apvit --official=/tmp/APViT --packages=/tmp/mmcv1

The step is the official training script's (tests/reference/official_one_step.py and
official_apvit_one_step.py build it): DAN's rafdb.py (ResNet-18 trunk, 4 heads, cross-entropy +
affinity + partition loss, SGD over the network and the affinity centres), SCAN-CCI's
main_rafdb.py (ResNet-50 trunk, shared-SCAN attention and region branches under DataParallel, SGD
in three learning-rate groups) or APViT's configs/apvit/RAF.py through mmcls and mmcv (IR-50 and
PoolingViT, cross-entropy, SGD with its paramwise decays, the gradients' norm clipped at 10), in
training mode, on random images and labels already on the device, as fer_jax's `--input=synthetic`. The
batch and input size default to fer_jax's `configs/METHOD.py:rafdb`. --variant: `fp32` as
released; `tuned` runs the networks under bf16 autocast in channels_last layout (the losses on
their outputs in float32, as autocast leaves DAN's in-place `addmm_` no bf16 form); `compiled`
is `tuned` with the forward pass through torch.compile. Steps are not synchronised one by one
(the official loops read no loss until an epoch ends); the device is synchronised before each
clock read. Prints one JSON line (img/s, step ms, warm-up seconds, torch version, device,
threads, the 1-minute load average before the run); `--output=FILE` appends it to a file.
`--profile_steps=N` then prints `torch.profiler`'s table of N more steps (self CPU time per op),
to set beside `benchmarks/profile_breakdown.py` (docs/performance.md).
"""

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]
from reference.official_apvit_one_step import apvit_official  # noqa: E402
from reference.official_one_step import dan_official  # noqa: E402
from reference.official_one_step import scan_cci_official  # noqa: E402

from fer_jax import api  # noqa: E402

TRAININGS = {"apvit": apvit_official, "dan": dan_official, "scan_cci": scan_cci_official}


def paper_config(method: str):
  """fer_jax's configs/METHOD.py:rafdb, which holds the official recipe's settings."""
  return api.load_config(os.path.join(ROOT, "configs", f"{method}.py:rafdb"))


def official_step(method: str, official: str, device: str, variant: str):
  """The official script's step on `device`, as `variant`; returns step(images, labels) → loss."""
  if device == "cuda" and method == "dan":  # run_training's settings; SCAN-CCI's script keeps cuDNN's defaults
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = True
  training = TRAININGS[method](official, paper_config(method), device, torch.float32)
  if variant != "fp32":
    for module in training.modules.values():
      module.to(memory_format=torch.channels_last)
  forward = torch.compile(training.forward) if variant == "compiled" else training.forward
  parameters = [p for group in training.optimizer.param_groups for p in group["params"]]

  def step(images, labels):
    training.optimizer.zero_grad()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=variant != "fp32"):
      outputs = forward(images)
    loss = training.loss(tuple(output.float() for output in outputs), labels)
    loss.backward()
    if training.max_grad_norm:
      torch.nn.utils.clip_grad_norm_(parameters, training.max_grad_norm)
    training.optimizer.step()
    return loss
  return step


def _synchronise(device: str) -> None:
  if device == "cuda":
    torch.cuda.synchronize()


def _timed(step, images, labels, steps: int, device: str) -> float:
  """Seconds for `steps` steps, the device synchronised before each clock read."""
  _synchronise(device)
  start = time.perf_counter()
  for _ in range(steps):
    step(images, labels)
  _synchronise(device)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--method", choices=sorted(TRAININGS), default="dan")
  parser.add_argument("--official", required=True, help="a clone of the method's official repository")
  parser.add_argument("--batch", type=int, default=0, help="default: configs/METHOD.py:rafdb's batch_size")
  parser.add_argument("--size", type=int, default=0, help="default: configs/METHOD.py:rafdb's input size")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--output", default="")
  parser.add_argument("--profile_steps", type=int, default=0)
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
  parser.add_argument("--variant", default="fp32", choices=["fp32", "tuned", "compiled"])
  parser.add_argument("--packages", default="", help="a folder put first on the import path: packages the "
                      "official code needs that are not installed (APViT's mmcv 1.x)")
  args = parser.parse_args()
  if args.packages:
    sys.path.insert(0, os.path.abspath(args.packages))
  config = paper_config(args.method)
  batch, size = args.batch or config.batch_size, args.size or config.input.size
  load = os.getloadavg()[0]
  step = official_step(args.method, os.path.abspath(args.official), args.device, args.variant)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, size, size, generator=generator).to(args.device)
  labels = torch.randint(0, config.model.num_classes, (batch,), generator=generator).to(args.device)
  if args.variant != "fp32":
    images = images.contiguous(memory_format=torch.channels_last)
  warmup = _timed(step, images, labels, args.warmup, args.device)
  seconds = _timed(step, images, labels, args.steps, args.device) / args.steps
  line = json.dumps({"code": "official", "method": args.method, "variant": args.variant, "batch_size": batch,
                     "input_size": size, "dtype": "float32" if args.variant == "fp32" else "bfloat16 autocast",
                     "steps": args.steps, "warmup_steps": args.warmup,
                     "train_img_per_s": round(batch / seconds, 2), "train_step_ms": round(1e3 * seconds, 1),
                     "warmup_s": round(warmup, 2), "torch": torch.__version__, "device": args.device,
                     "device_kind": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                     "threads": torch.get_num_threads(), "load_average_1m": load})
  print(line)
  if args.output:
    with open(args.output, "a") as f:
      f.write(line + "\n")
  if args.profile_steps:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
      for _ in range(args.profile_steps):
        step(images, labels)
    print(f"{args.profile_steps} steps:")
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
  main()
