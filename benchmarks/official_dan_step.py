"""The official DAN training step (rafdb.py's `run_training`) timed on random inputs, to set beside
`python -m fer_jax.benchmark --config=configs/dan.py:rafdb --input=synthetic` on the same machine.

Needs a clone of the official repository (imported from there, not copied):
  git clone https://github.com/yaoing/DAN /tmp/DAN
  python benchmarks/official_dan_step.py --official=/tmp/DAN --batch=16 [--size=224] [--steps=8] [--warmup=2]
      [--device=cuda] [--variant=fp32|tuned|compiled]

The step is the official one: DAN (ResNet-18 trunk, 4 heads) in training mode, cross-entropy +
affinity + partition loss, SGD with momentum 0.9 and weight decay 1e-4 over the network and the
affinity centres; random images and labels already on the device, as fer_jax's
`--input=synthetic`. --variant: `fp32` as released; `tuned` runs the network under bf16 autocast
in channels_last layout (the losses on its outputs in float32, as autocast leaves the official
in-place `addmm_` no bf16 form); `compiled` is `tuned` with the network through torch.compile.
Steps are not synchronised one by one (the official loop reads no loss until an epoch ends); the
device is synchronised before each clock read. Prints one JSON line (img/s, step ms, warm-up
seconds, torch version, device, threads, the 1-minute load average before the run); `--output=FILE`
appends it to a file. `--profile_steps=N` then prints `torch.profiler`'s table of N more steps
(self CPU time per op), to set beside `benchmarks/profile_breakdown.py` (docs/performance.md).
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from reference.official_one_step import official_import  # noqa: E402
from reference.official_one_step import stand_in  # noqa: E402


def official_step(official: str, device: str, variant: str, num_classes: int = 7):
  """rafdb.py's model, losses and optimiser on `device`, as `variant`; returns step(images, labels) → loss."""
  sys.modules.setdefault("sklearn.metrics", stand_in("sklearn.metrics", balanced_accuracy_score=None))
  rafdb = official_import(official, "rafdb", ("pandas", "sklearn"))
  network = official_import(official, "networks.dan")
  if device == "cuda":  # run_training's settings
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = torch.backends.cudnn.enabled = True
  torch.manual_seed(0)
  model = network.DAN(num_class=num_classes, num_head=4, pretrained=False).train().to(device)
  affinity = rafdb.AffinityLoss(torch.device(device), num_class=num_classes)
  optimizer = torch.optim.SGD(list(model.parameters()) + list(affinity.parameters()), lr=0.1,
                              weight_decay=1e-4, momentum=0.9)
  cross_entropy, partition = torch.nn.CrossEntropyLoss(), rafdb.PartitionLoss()
  if variant != "fp32":
    model = model.to(memory_format=torch.channels_last)
  forward = torch.compile(model) if variant == "compiled" else model

  def step(images, labels):
    optimizer.zero_grad()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=variant != "fp32"):
      out, features, heads = forward(images)
    out, features, heads = out.float(), features.float(), heads.float()
    loss = cross_entropy(out, labels) + affinity(features, labels) + partition(heads)
    loss.backward()
    optimizer.step()
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
  parser.add_argument("--official", required=True, help="a clone of https://github.com/yaoing/DAN")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--output", default="")
  parser.add_argument("--profile_steps", type=int, default=0)
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
  parser.add_argument("--variant", default="fp32", choices=["fp32", "tuned", "compiled"])
  args = parser.parse_args()
  load = os.getloadavg()[0]
  step = official_step(os.path.abspath(args.official), args.device, args.variant)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(args.device)
  labels = torch.randint(0, 7, (args.batch,), generator=generator).to(args.device)
  if args.variant != "fp32":
    images = images.contiguous(memory_format=torch.channels_last)
  warmup = _timed(step, images, labels, args.warmup, args.device)
  seconds = _timed(step, images, labels, args.steps, args.device) / args.steps
  line = json.dumps({"code": "official DAN (rafdb.py step)", "variant": args.variant, "batch_size": args.batch,
                     "input_size": args.size, "dtype": "float32" if args.variant == "fp32" else "bfloat16 autocast",
                     "steps": args.steps, "warmup_steps": args.warmup,
                     "train_img_per_s": round(args.batch / seconds, 2), "train_step_ms": round(1e3 * seconds, 1),
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
