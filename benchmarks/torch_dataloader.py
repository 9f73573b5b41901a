r"""PyTorch reference for the input-pipeline benchmark: DAN's RAF-DB training loader.

  python benchmarks/torch_dataloader.py --root=/tmp/rafdb_layout \
      [--batch_size=64] [--workers=2] [--batches=150] [--warmup=10] [--seed=0]

Does, per image, the work the official DAN training script (github.com/yaoing/DAN, `rafdb.py`)
asks of its train loader, so our pipeline's img/s can be set beside it on the same machine:

  * the train split is the lines of `EmoLabel/list_patition_label.txt` whose name starts
    with "train"; labels 1-7 become 0-6; `train_00001.jpg` is read from
    `Image/aligned/train_00001_aligned.jpg`;
  * each image is opened with PIL and converted to RGB (no OpenCV, so no BGR step);
  * augmentation, in torchvision: resize to 224×224, horizontal flip (p=0.5), with p=0.2
    both a rotation of up to ±20° and a 224 crop of the image padded by 32, to tensor,
    ImageNet mean/std normalisation, random erasing (p=0.5, 2-25 % of the area);
  * a DataLoader that shuffles, with pinned memory and without persistent workers.

The official script's own defaults are batch 256 and 4 workers; ours are 64 and 2 to match
our benchmark. --root is a RAF-DB basic folder: the real one, or one written by
`python -m fer_jax.data.generate_layout --dataset=rafdb --out=DIR`. Epochs repeat until
--warmup + --batches batches are read; only the last --batches are timed. Prints one JSON line.

torch and torchvision are test extras of fer_jax, so nothing in the package imports this.
"""

import argparse
import json
import os
import time

from PIL import Image
import torch
from torch.utils import data
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_FILE = os.path.join("EmoLabel", "list_patition_label.txt")
IMAGE_FOLDER = os.path.join("Image", "aligned")


def train_entries(root: str) -> list[tuple[str, int]]:
  """(image path, 0-based label) of every train line of the RAF-DB label file."""
  entries = []
  with open(os.path.join(root, LABEL_FILE)) as f:
    for line in f:
      if not line.strip():
        continue
      name, label = line.split()[:2]
      if name.startswith("train"):
        stem = name.split(".")[0]
        entries.append((os.path.join(root, IMAGE_FOLDER, f"{stem}_aligned.jpg"), int(label) - 1))
  if not entries:
    raise ValueError(f"{os.path.join(root, LABEL_FILE)} names no train images.")
  return entries


def dan_train_transform() -> transforms.Compose:
  """DAN's RAF-DB training augmentation, step for step."""
  return transforms.Compose([
      transforms.Resize((224, 224)),
      transforms.RandomHorizontalFlip(),
      transforms.RandomApply([transforms.RandomRotation(20), transforms.RandomCrop(224, padding=32)], p=0.2),
      transforms.ToTensor(),
      transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
      transforms.RandomErasing(scale=(0.02, 0.25)),
  ])


class RafdbTrain(data.Dataset):
  """RAF-DB basic's train split as (normalised 3×224×224 float tensor, label)."""

  def __init__(self, root: str, transform):
    self.entries = train_entries(root)
    self.transform = transform

  def __len__(self) -> int:
    return len(self.entries)

  def __getitem__(self, index: int):
    path, label = self.entries[index]
    with Image.open(path) as image:
      rgb = image.convert("RGB")
    return self.transform(rgb), label


def make_loader(root: str, batch_size: int, workers: int) -> data.DataLoader:
  """Shuffled batches, pinned memory (as the official script; torch skips it, with a warning on
  stderr, where there is no accelerator), workers started anew each epoch."""
  return data.DataLoader(RafdbTrain(root, dan_train_transform()), batch_size=batch_size, shuffle=True,
                         num_workers=workers, pin_memory=True)


def batches(loader: data.DataLoader):
  """The loader's batches, epoch after epoch, forever."""
  while True:
    yield from loader


def measure(loader: data.DataLoader, num_batches: int, warmup: int) -> tuple[int, float]:
  """(images, seconds) over `num_batches` batches read after `warmup` untimed ones."""
  stream = batches(loader)
  for _ in range(warmup):
    next(stream)
  images, start = 0, time.perf_counter()
  for _ in range(num_batches):
    images += next(stream)[0].shape[0]
  return images, time.perf_counter() - start


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True, help="RAF-DB basic folder (EmoLabel/, Image/aligned/).")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes.")
  parser.add_argument("--batches", type=int, default=150, help="Timed batches.")
  parser.add_argument("--warmup", type=int, default=10, help="Untimed batches read first.")
  parser.add_argument("--seed", type=int, default=0, help="Seeds the shuffling and augmentation.")
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  torch.manual_seed(args.seed)
  loader = make_loader(args.root, args.batch_size, args.workers)
  images, seconds = measure(loader, args.batches, args.warmup)
  print(json.dumps({"pipeline": "torch_dataloader_dan_rafdb", "img_per_s": round(images / seconds, 1),
                    "batch_size": args.batch_size, "workers": args.workers, "images": images}))


if __name__ == "__main__":
  main()
