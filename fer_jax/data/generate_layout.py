r"""Writes a stand-in for RAF-DB, AffectNet, FER2013 or FERPlus: the real set's size and layout, generated faces.

  python -m fer_jax.data.generate_layout --dataset=rafdb --out=/tmp/rafdb_layout \
      [--scale=1.0] [--seed=0] [--workers=N]
  python -m fer_jax.data.generate_layout --dataset=affectnet --out=/tmp/affectnet_layout --scale=0.05

None of these sets can be downloaded, so input-pipeline benchmarks run on this instead: the
same folders, file names, label files and JPEG sizes as the owners' release, with faces from
`fer_jax.data.synthetic_faces` so decoding costs what it does on the real images. The
builders (`fer_jax.data.builders.rafdb`, `.affectnet`, `.fer2013`, `.ferplus`) read the result as they
read the real download; the program ends by printing the `fer_jax.data.prepare` command that
does so. Prepare it into its own --data_dir, never the one that holds (or will hold) the real set.

  rafdb      RAF-DB basic: EmoLabel/list_patition_label.txt ("train_00001.jpg 5", labels 1-7)
             and Image/aligned/train_00001_aligned.jpg, 100×100 JPEGs; 12,271 train and
             3,068 test images in the real set's class proportions.
  rafdb_aligned224
             APViT's RAF-DB.zip, read by the builder config rafdb/aligned224:
             EmoLabel/train.txt and EmoLabel/test.txt ("train_00001.jpg 5", labels 1-7) and
             Image/aligned_224/train_00001.jpg, 224×224 JPEGs; the counts, and for one --seed
             the labels and faces, of rafdb.
  fer2013    Kaggle's fer2013.csv: header "emotion,pixels,Usage", then one row per 48×48 grey
             face (2304 space-separated values 0-255), Usage Training (28,709 rows), then
             PublicTest and PrivateTest (3,589 each), in FER2013's Training class proportions.
  ferplus    fer2013.csv as above with FERPlus's fer2013new.csv beside it ("Usage,Image name,
             neutral,...,NF"; image fer0000000.png is row 1; 8 of 10 votes for the row's
             emotion, 2 for a random column), read by the builder without image folders (it
             regenerates the images from fer2013.csv, as FERPlus's script does).
  affectnet  AffectNet's original release, manually annotated part:
             Manually_Annotated_file_lists/training.csv (with header) and validation.csv
             (without), Manually_Annotated_Images/<folder>/<56 hex digits>.jpg; 287,651 train
             images in the paper's class proportions and 500 per class for validation, codes
             0-7 only (the real lists also hold codes 8-10, which the builder drops unread).
             Images are JPEGs of varied, mostly non-square sizes (sides 130-1000 px) with the
             face inside the CSV's face box; landmarks, valence and arousal are plausible
             numbers, not measurements. synthetic_faces has no contempt face, so code 7
             images show neutral ones.

RAF-DB, FERPlus and AffectNet also get Wang et al.'s occlusion, pose > 30 and pose > 45 list
files (github.com/kaiwang960112/Challenge-condition-FER-dataset) in their formats, naming
random test (AffectNet: validation) images in the real lists' share of the test split, so the
builders add their subset splits.

`--scale` multiplies every class count (rounded, at least one image per class). Each file
(each FER2013 row) is a pure function of (--seed, split, index in split), so worker count and
order do not change the output.
"""

import csv
import dataclasses
import functools
import io
import math
import multiprocessing
import os
import shlex
import shutil
import time

from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from fer_jax import cli
from fer_jax.data import labels
from fer_jax.data import synthetic_faces
from fer_jax.errors import ConfigError

# Class counts in each data set's own label order (labels.CLASS_ORDERS).
RAFDB_COUNTS = {"train": (1290, 281, 717, 4772, 1982, 705, 2524),  # 12,271
                "test": (329, 74, 160, 1185, 478, 162, 680)}     # 3,068
AFFECTNET_COUNTS = {  # Mollahosseini et al. 2017, Table 4 (manually annotated), codes 0-7
    "train": (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750),  # 287,651
    "validation": (500,) * 8}
# Rough (valence, arousal) centre per AffectNet code, for plausible CSV values.
AFFECTNET_AFFECT = ((0.0, 0.0), (0.65, 0.25), (-0.6, -0.2), (0.2, 0.65), (-0.5, 0.7),
                    (-0.65, 0.4), (-0.55, 0.6), (-0.45, 0.2))
# FER2013's Training counts; the test parts in the same proportions, rounded to 3,589 each.
FER2013_COUNTS = {"train": (3995, 436, 4097, 7215, 4830, 3171, 4965),        # 28,709
                  "public_test": (499, 55, 512, 902, 604, 396, 621),         # 3,589
                  "private_test": (499, 55, 512, 902, 604, 396, 621)}        # 3,589
FER2013_USAGE = {"train": "Training", "public_test": "PublicTest", "private_test": "PrivateTest"}
FER2013_HEADER = ("emotion", "pixels", "Usage")
FERPLUS_HEADER = ("Usage", "Image name", *labels.CLASS_ORDERS["ferplus"], "unknown", "NF")
# Wang et al.'s lists: {data set: ((file, the share of the test images it names, its line format), ...)};
# shares are the real lists' distinct images over the real test (AffectNet: validation) split.
SUBSET_LISTS = {
    "rafdb": (("rafdb_occlusion_list.txt", 734 / 3068, "{stem}_aligned {label} 1\r\n"),
              ("val_raf_db_list.txt", 1247 / 3068, "{label}/{stem}_aligned.jpg\n"),
              ("val_raf_db_list_45.txt", 558 / 3068, "{label}/{stem}_aligned.jpg\n")),
    "ferplus": (("jianfei_occlusion_list.txt", 605 / 3137, "{label}_{stem}.png 8 0\r\n"),
                ("pose_30_ferplus_list.txt", 1170 / 3137, "{label}/{stem}.jpg\n"),
                ("pose_45_ferplus_list.txt", 633 / 3137, "{label}/{stem}.jpg\n")),
    "affectnet": (("occlusion_affectnet_list.txt", 683 / 4000, "val/{label}/{stem}/\n"),
                  ("pose_30_affectnet_list.txt", 1944 / 4000, "{label}/{stem}.jpg\n"),
                  ("pose_45_affectnet_list.txt", 983 / 4000, "{label}/{stem}/8.jpg\n")),
}
FER2013_SIZE = 48
AFFECTNET_HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal")
AFFECTNET_IMAGES_PER_FOLDER = 400
RAFDB_SIZE = 100
RAFDB_ALIGNED224_SIZE = 224
SIDES = (130, 1000)         # AffectNet image sides, px
FACE_RENDER_MAX = 224       # AffectNet faces are drawn at most this big, then scaled to the box
QUALITIES = (90, 96)        # JPEG quality drawn from [90, 96)
NOISE_TILE = 2048           # sensor-like noise added to AffectNet images, cut from one tile
NOISE_STD = 4.0

SPLIT_IDS = {"train": 0, "test": 1, "validation": 1, "public_test": 1, "private_test": 2}


@dataclasses.dataclass(frozen=True)
class Job:
  """One image to write: where, which face (fer2013 order, as `synthetic_faces.render`) and how."""
  path: str
  face: int
  key: tuple[int, ...]  # seeds the image's own generator
  size: tuple[int, int] = (RAFDB_SIZE, RAFDB_SIZE)  # width, height
  box: tuple[int, int, int, int] | None = None  # face x, y, width, height; None: the face fills it
  usage: str | None = None  # FER2013: the Usage of the job's row in the CSV at `path`


def class_counts(counts, scale: float) -> list[int]:
  return [max(1, round(count * scale)) for count in counts]


def shuffled_labels(counts, rng: np.random.Generator) -> np.ndarray:
  """Each label `counts[label]` times, in random order."""
  return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def face_index(order: str, label: int) -> int:
  """The `synthetic_faces.render` class of a label in `order` (contempt has none: neutral)."""
  name = labels.CLASS_ORDERS[order][label]
  name = labels.NEUTRAL if name == labels.CONTEMPT else name
  return synthetic_faces.CLASSES.index(name)


# ---------------------------------------------------------------------------------------------
# RAF-DB basic, and APViT's 224×224 re-alignment of it.


def rafdb_jobs(out: str, scale: float, seed: int, folder: str, suffix: str,
               size: int) -> tuple[list[Job], dict, dict]:
  """Jobs for `Image/<folder>/<stem><suffix>.jpg`; returns (jobs, {split: label lines}, counts)."""
  rng = np.random.default_rng([seed, 1])
  jobs, lines, counts = [], {}, {}
  os.makedirs(os.path.join(out, "EmoLabel"), exist_ok=True)
  os.makedirs(os.path.join(out, "Image", folder), exist_ok=True)
  for split, real_counts in RAFDB_COUNTS.items():
    counts[split] = class_counts(real_counts, scale)
    width = 5 if split == "train" else 4
    lines[split] = []
    for index, label in enumerate(shuffled_labels(counts[split], rng)):
      stem = f"{split}_{index + 1:0{width}d}"
      lines[split].append(f"{stem}.jpg {label + 1}")
      jobs.append(Job(os.path.join(out, "Image", folder, f"{stem}{suffix}.jpg"),
                      face_index("rafdb", label), (seed, SPLIT_IDS[split], index), (size, size)))
  return jobs, lines, counts


def write_lines(path: str, lines: list[str]) -> None:
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def write_subset_lists(folder: str, dataset: str, test: list[tuple[str, int]], seed: int) -> None:
  """Wang et al.'s three lists of `dataset` over `test` ((file stem, label) per image), each naming
  a random share of it in list order (a pure function of the seed)."""
  rng = np.random.default_rng([seed, 5])
  for file_name, share, line in SUBSET_LISTS[dataset]:
    chosen = np.sort(rng.choice(len(test), size=max(1, round(share * len(test))), replace=False))
    with open(os.path.join(folder, file_name), "w", newline="") as f:
      f.writelines(line.format(stem=test[i][0], label=test[i][1]) for i in chosen)


def rafdb_subset_lists(out: str, lines: dict, seed: int) -> None:
  test = [(text.split(".")[0], int(text.split()[1]) - 1) for text in lines["test"]]
  write_subset_lists(os.path.join(out, "EmoLabel"), "rafdb", test, seed)


def rafdb_layout(out: str, scale: float, seed: int) -> tuple[list[Job], dict]:
  """The image jobs, with the label file written; returns (jobs, {split: count per label})."""
  jobs, lines, counts = rafdb_jobs(out, scale, seed, "aligned", "_aligned", RAFDB_SIZE)
  write_lines(os.path.join(out, "EmoLabel", "list_patition_label.txt"), lines["train"] + lines["test"])
  rafdb_subset_lists(out, lines, seed)
  return jobs, counts


def rafdb_aligned224_layout(out: str, scale: float, seed: int) -> tuple[list[Job], dict]:
  """APViT's RAF-DB.zip: the image jobs, with train.txt and test.txt written; as rafdb_layout."""
  jobs, lines, counts = rafdb_jobs(out, scale, seed, "aligned_224", "", RAFDB_ALIGNED224_SIZE)
  for split, split_lines in lines.items():
    write_lines(os.path.join(out, "EmoLabel", f"{split}.txt"), split_lines)
  rafdb_subset_lists(out, lines, seed)
  return jobs, counts


# ---------------------------------------------------------------------------------------------
# AffectNet, original release.


def image_geometry(rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
  """(width, height) log-uniform in SIDES, aspect 3:4 to 4:3; a square face box inside it."""
  low, high = SIDES
  width = int(np.exp(rng.uniform(np.log(low), np.log(high))))
  height = int(np.clip(width * rng.uniform(0.75, 4 / 3), low, high))
  side = max(8, int(min(width, height) * rng.uniform(0.45, 0.85)))
  x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
  return (width, height), (x, y, side, side)


def landmarks(box, rng: np.random.Generator) -> str:
  """68 "x;y" points in the face box (jaw arc, then the inner face): plausible, not anatomical."""
  x, y, w, h = box
  angles = np.linspace(np.pi, 0, 17)
  jaw = np.stack([0.5 + 0.45 * np.cos(angles), 0.45 + 0.5 * np.sin(angles)], 1)
  inner = np.random.default_rng(68).uniform([0.2, 0.2], [0.8, 0.8], (51, 2))  # one fixed template
  points = np.concatenate([jaw, inner]) + rng.normal(0, 0.02, (68, 2))
  points = points * [w, h] + [x, y]
  return ";".join(f"{v:.2f}" for v in points.ravel())


def affect(code: int, rng: np.random.Generator) -> tuple[float, float]:
  centre = np.array(AFFECTNET_AFFECT[code])
  return tuple(float(v) for v in np.clip(centre + rng.normal(0, 0.2, 2), -1, 1).round(6))


def affectnet_layout(out: str, scale: float, seed: int) -> tuple[list[Job], dict]:
  """The image jobs, with both CSVs written; returns (jobs, {split: count per code})."""
  rng = np.random.default_rng([seed, 2])
  counts = {split: class_counts(real, scale) for split, real in AFFECTNET_COUNTS.items()}
  folders = max(1, math.ceil(sum(map(sum, counts.values())) / AFFECTNET_IMAGES_PER_FOLDER))
  lists = os.path.join(out, "Manually_Annotated_file_lists")
  images = os.path.join(out, "Manually_Annotated_Images")
  os.makedirs(lists, exist_ok=True)
  for folder in range(1, folders + 1):
    os.makedirs(os.path.join(images, str(folder)), exist_ok=True)
  jobs, validation = [], []
  for split, file_name in (("train", "training.csv"), ("validation", "validation.csv")):
    with open(os.path.join(lists, file_name), "w", newline="") as f:
      writer = csv.writer(f, lineterminator="\n")
      if split == "train":
        writer.writerow(AFFECTNET_HEADER)
      for index, code in enumerate(shuffled_labels(counts[split], rng)):
        name = f"{rng.integers(1, folders + 1)}/{rng.bytes(28).hex()}.jpg"
        size, box = image_geometry(rng)
        writer.writerow([name, *box, landmarks(box, rng), int(code), *affect(int(code), rng)])
        jobs.append(Job(os.path.join(images, name), face_index("affectnet8", int(code)),
                        (seed, SPLIT_IDS[split], index), size, box))
        if split == "validation":
          validation.append((name.split("/")[1].removesuffix(".jpg"), int(code)))
  write_subset_lists(lists, "affectnet", validation, seed)
  return jobs, counts


# ---------------------------------------------------------------------------------------------
# FER2013, Kaggle's CSV.


def fer2013_layout(out: str, scale: float, seed: int) -> tuple[list[Job], dict]:
  """One job per CSV row, in file order (Training, PublicTest, PrivateTest); the CSV itself is
  written by `write_csv`. Returns (jobs, {split: count per label})."""
  rng = np.random.default_rng([seed, 4])
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "fer2013.csv")
  jobs, counts = [], {}
  for split, real_counts in FER2013_COUNTS.items():
    counts[split] = class_counts(real_counts, scale)
    for index, label in enumerate(shuffled_labels(counts[split], rng)):
      jobs.append(Job(path, face_index("fer2013", int(label)), (seed, SPLIT_IDS[split], index),
                      (FER2013_SIZE, FER2013_SIZE), usage=FER2013_USAGE[split]))
  return jobs, counts


def ferplus_layout(out: str, scale: float, seed: int) -> tuple[list[Job], dict]:
  """fer2013_layout's jobs, with fer2013new.csv and Wang et al.'s lists written; returns (jobs,
  {split: count per FER2013 label}) under FERPlus's split names."""
  jobs, counts = fer2013_layout(out, scale, seed)
  rng = np.random.default_rng([seed, 6])
  to_ferplus = [labels.CLASS_ORDERS["ferplus"].index(name) for name in labels.CLASS_ORDERS["fer2013"]]
  test = []
  with open(os.path.join(out, "fer2013new.csv"), "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(FERPLUS_HEADER)
    for index, job in enumerate(jobs):
      votes = np.zeros(len(FERPLUS_HEADER) - 2, int)
      votes[to_ferplus[job.face]] += 8
      votes[rng.integers(len(votes))] += 2
      writer.writerow([job.usage, f"fer{index:07d}.png", *votes])
      if job.usage == FER2013_USAGE["private_test"]:
        test.append((f"fer{index:07d}", to_ferplus[job.face]))
  write_subset_lists(out, "ferplus", test, seed)
  return jobs, {"train": counts["train"], "validation": counts["public_test"], "test": counts["private_test"]}


# ---------------------------------------------------------------------------------------------
# Writing the images (in worker processes).

@functools.cache
def noise_tile(seed: int) -> np.ndarray:
  """NOISE_TILE² int8 noise, made once per process; images add a random window of it."""
  rng = np.random.default_rng([seed, 3])
  return np.clip(rng.normal(0, NOISE_STD, (NOISE_TILE, NOISE_TILE, 3)), -127, 127).astype(np.int8)


def photo(job: Job, rng: np.random.Generator) -> Image.Image:
  """A job.size picture: smooth random background, the face scaled into job.box, noise."""
  width, height = job.size
  x, y, w, h = job.box
  face = synthetic_faces.render(job.face, rng, min(max(w, h), FACE_RENDER_MAX))
  corners = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
  image = Image.fromarray(corners).resize((width, height), Image.BICUBIC)
  image.paste(Image.fromarray(face).resize((w, h), Image.BILINEAR), (x, y))
  top, left = rng.integers(0, NOISE_TILE - height + 1), rng.integers(0, NOISE_TILE - width + 1)
  pixels = np.asarray(image, np.int16) + noise_tile(job.key[0])[top:top + height, left:left + width]
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image(job: Job) -> int:
  """Writes the job's JPEG; returns its size in bytes."""
  rng = np.random.default_rng(job.key)
  if job.box is None:
    image = Image.fromarray(synthetic_faces.render(job.face, rng, job.size[0]))
  else:
    image = photo(job, rng)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=int(rng.integers(*QUALITIES)))
  with open(job.path, "wb") as f:
    f.write(buffer.getvalue())
  return buffer.tell()


def _pool(workers: int):
  """Worker processes started fresh ("spawn"): forking a process that runs JAX's threads can deadlock."""
  return multiprocessing.get_context("spawn").Pool(workers)


def write_images(jobs: list[Job], workers: int) -> int:
  """Writes every job's image with `workers` processes (0: in this one); returns total bytes."""
  if workers <= 0:
    return sum(map(write_image, jobs))
  with _pool(workers) as pool:
    return sum(pool.imap_unordered(write_image, jobs, chunksize=64))


def grey_pixels(job: Job) -> str:
  """The job's face, converted to grey (ITU-R 601 luma), as space-separated values."""
  face = synthetic_faces.render(job.face, np.random.default_rng(job.key), job.size[0])
  return " ".join(map(str, np.asarray(Image.fromarray(face).convert("L")).ravel().tolist()))


def write_csv(jobs: list[Job], workers: int) -> int:
  """Writes the FER2013 CSV (header, then one row per job, in order); returns its bytes.

  A job's `face` is its emotion code: synthetic_faces renders in the fer2013 order."""
  path = jobs[0].path
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(FER2013_HEADER)
    if workers <= 0:
      rows = map(grey_pixels, jobs)
      writer.writerows((job.face, pixels, job.usage) for job, pixels in zip(jobs, rows))
    else:
      with _pool(workers) as pool:
        rows = pool.imap(grey_pixels, jobs, chunksize=256)
        writer.writerows((job.face, pixels, job.usage) for job, pixels in zip(jobs, rows))
  return os.path.getsize(path)


# ---------------------------------------------------------------------------------------------

LAYOUTS = {"rafdb": rafdb_layout, "rafdb_aligned224": rafdb_aligned224_layout,
           "affectnet": affectnet_layout, "fer2013": fer2013_layout, "ferplus": ferplus_layout}
ORDERS = {"rafdb": "rafdb", "rafdb_aligned224": "rafdb", "affectnet": "affectnet8", "fer2013": "fer2013",
          "ferplus": "fer2013"}
WRITERS = {"fer2013": write_csv, "ferplus": write_csv}  # the others: write_images
PREPARE_NAMES = {"rafdb_aligned224": "rafdb/aligned224"}  # --dataset of prepare, where not the same


INCOMPLETE = ".generate_layout_incomplete"  # in --out while a layout is being written: a rerun starts it over


def generate(dataset: str, out: str, scale: float = 1.0, seed: int = 0, workers: int = 0) -> dict:
  """Writes the layout of `dataset` under `out` (an --out that an interrupted run left half-written is cleared
  first); returns {split: count per label}, "bytes", "seconds"."""
  if dataset not in LAYOUTS:
    raise ConfigError(f"Unknown data set {dataset!r}; choose one of {', '.join(LAYOUTS)}.")
  if not (math.isfinite(scale) and scale > 0):
    raise ConfigError(f"--scale must be a positive number, got {scale}.")
  mark = os.path.join(out, INCOMPLETE)
  if os.path.isfile(mark):
    shutil.rmtree(out)
    logging.info("Removed the partial layout an interrupted run left in %s.", out)
  if os.path.isdir(out) and os.listdir(out):
    raise ConfigError(f"--out {out} is not empty; choose a new folder.")
  start = time.perf_counter()
  os.makedirs(out, exist_ok=True)
  open(mark, "w", encoding="utf-8").close()  # removed once every file is written
  jobs, counts = LAYOUTS[dataset](out, scale, seed)
  total_bytes = WRITERS.get(dataset, write_images)(jobs, workers)
  os.remove(mark)
  return {**counts, "bytes": total_bytes, "seconds": time.perf_counter() - start}


def summary(dataset: str, out: str, result: dict) -> str:
  names = labels.CLASS_ORDERS[ORDERS[dataset]]
  splits = [k for k in result if k not in ("bytes", "seconds")]
  images = sum(sum(result[split]) for split in splits)
  what = f"one CSV of {images:,} faces" if dataset in WRITERS else f"{images:,} JPEGs"
  lines = [f"Wrote a generated {dataset} layout to {out}: {what}, "
           f"{result['bytes'] / 2**20:,.1f} MiB, in {result['seconds']:.1f} s."]
  for split in splits:
    per_class = ", ".join(f"{name} {n:,}" for name, n in zip(names, result[split]))
    lines.append(f"  {split}: {sum(result[split]):,} ({per_class})")
  data_dir = os.path.abspath(out).rstrip(os.sep) + "_tfds"
  lines += ["Prepare it (into its own data_dir, apart from any real copy; its warning that the splits' sizes differ "
            "from the published ones is expected) with:",
            f"  python -m fer_jax.data.prepare --dataset={PREPARE_NAMES.get(dataset, dataset)} "
            f"--manual_dir={shlex.quote(os.path.abspath(out))} "
            f"--data_dir={shlex.quote(data_dir)}"]
  return "\n".join(lines)


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  flags.DEFINE_enum("dataset", None, list(LAYOUTS), "Which data set's layout to write.")
  cli.define_path("out", None, "New (or empty) folder to write it to: the --manual_dir of prepare.")
  flags.DEFINE_float("scale", 1.0, "Multiplies every class count (at least one image per class).")
  flags.DEFINE_integer("seed", 0, "Seeds labels, names, geometry and pixels.")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes writing images (0: this one).", lower_bound=0)
  cli.mark_required(["dataset", "out"])


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  try:
    result = generate(args.dataset, args.out, args.scale, args.seed, args.workers)
  except ConfigError as e:
    raise ConfigError(f"Cannot write the {args.dataset} layout: {e}") from None
  print(summary(args.dataset, args.out, result))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
