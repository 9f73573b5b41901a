"""DAN's training loss in float32 and in bfloat16 (fp32 parameters, bf16 compute), step by step.

  python benchmarks/bf16_loss_curve.py [--steps=240] [--size=72] [--pool=128] [--out=benchmarks/bf16_loss_curve]

Both runs start from one initial state and see the same batches in the same order (the harness
of tests/test_bf16.py): `--pool` synthetic faces of configs/dan.py:synthetic at --size px,
reshuffled every pass, batches of 8. Writes OUT.json (per-step losses, the means of 10 windows of
steps, the largest window gap in units of the fp32 run's drop) and OUT.png (both curves).
"""

import argparse
import json
import os
import sys

from matplotlib import pyplot as plt
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import test_bf16  # noqa: E402  (the harness: examples, batches, paired runs)

WINDOWS = 10


def windows(losses):
  return losses[:len(losses) // WINDOWS * WINDOWS].reshape(WINDOWS, -1).mean(axis=1)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=240)
  parser.add_argument("--size", type=int, default=72)
  parser.add_argument("--pool", type=int, default=128)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "bf16_loss_curve"))
  args = parser.parse_args()
  config = test_bf16.get_config("configs/dan.py:synthetic")
  config.input.size, config.batch_size = args.size, test_bf16.BATCH
  rng = np.random.default_rng(0)
  images, labels = test_bf16._examples(config, rng, args.pool)  # pylint: disable=protected-access
  batches = test_bf16._batch_indices(args.steps, rng, args.pool)  # pylint: disable=protected-access
  full, mixed = test_bf16.float32_and_bfloat16_losses(config, images, labels, batches)
  a, b = windows(full), windows(mixed)
  result = {"model": "dan", "size": args.size, "batch": test_bf16.BATCH, "pool": args.pool, "steps": args.steps,
            "float32_windows": np.round(a, 4).tolist(), "bfloat16_windows": np.round(b, 4).tolist(),
            "max_window_gap_over_float32_drop": round(float(np.max(np.abs(b - a)) / (a[0] - a[-1])), 4),
            "float32_losses": np.round(full, 5).tolist(), "bfloat16_losses": np.round(mixed, 5).tolist()}
  with open(args.out + ".json", "w") as f:
    json.dump(result, f)
  steps = np.arange(1, args.steps + 1)
  plt.figure(figsize=(7, 4))
  centres = steps[len(steps) // WINDOWS // 2::len(steps) // WINDOWS][:WINDOWS]
  for losses, label, color in ((full, "float32", "C0"), (mixed, "bfloat16 compute, fp32 parameters", "C3")):
    plt.plot(steps, losses, color=color, alpha=0.25)
    plt.plot(centres, windows(losses), "o-", color=color, label=f"{label} (means of {WINDOWS} windows)")
  plt.xlabel("step (batch of 8)")
  plt.ylabel("DAN training loss (CE + affinity + partition)")
  plt.title(f"DAN, synthetic faces {args.size} px, CPU: same start, same batches")
  plt.legend()
  plt.tight_layout()
  plt.savefig(args.out + ".png", dpi=100)
  print(json.dumps({k: v for k, v in result.items() if not k.endswith("_losses")}))


if __name__ == "__main__":
  main()
