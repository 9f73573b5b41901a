"""fer_jax.data.generate_layout: tiny generated layouts that the real builders prepare."""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from fer_jax.data import generate_layout
from fer_jax.data import labels
from fer_jax.data import prepare
from helpers import assert_user_error, run_command

tfds.disable_progress_bar()
SCALE = 0.001  # 1-5 images per class


def build(dataset, manual_dir, data_dir):
  builder = prepare.make_builder(dataset, os.fspath(data_dir))
  builder.download_and_prepare(file_format="array_record",
                               download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def label_counts(builder, split, num_classes) -> list[int]:
  source = builder.as_data_source(split)
  return np.bincount([int(source[i]["label"]) for i in range(len(source))], minlength=num_classes).tolist()


def test_class_counts_scale_and_keep_every_class():
  assert generate_layout.class_counts((1290, 281, 4772), 0.001) == [1, 1, 5]
  assert sum(generate_layout.class_counts(generate_layout.RAFDB_COUNTS["train"], 1.0)) == 12_271
  assert sum(generate_layout.class_counts(generate_layout.RAFDB_COUNTS["test"], 1.0)) == 3_068
  assert sum(generate_layout.class_counts(generate_layout.AFFECTNET_COUNTS["train"], 1.0)) == 287_651
  fer = generate_layout.FER2013_COUNTS
  assert [sum(fer[split]) for split in ("train", "public_test", "private_test")] == [28_709, 3_589, 3_589]
  train = np.array(fer["train"])
  for split in ("public_test", "private_test"):  # Training's proportions, rounded
    assert np.abs(np.array(fer[split]) - train * 3_589 / train.sum()).max() < 1


def _generate(dataset: str, out) -> str:
  """Runs the generate_layout command; its stdout (which ends with the prepare command)."""
  return subprocess.run([sys.executable, "-m", "fer_jax.data.generate_layout", f"--dataset={dataset}", f"--out={out}",
                         f"--scale={SCALE}", "--workers=2"], capture_output=True, text=True, check=True).stdout


def _assert_rafdb_counts(builder) -> None:
  for split in ("train", "test"):
    assert label_counts(builder, split, 7) == generate_layout.class_counts(generate_layout.RAFDB_COUNTS[split], SCALE)


def listed(path, pattern: str) -> dict[str, int]:
  """{image: label} of a list file, with `pattern` matching the label and the image's name in a line."""
  with open(path, newline="") as f:
    lines = f.read().split("\n")
  assert lines.pop() == ""  # the last line ends with a newline too
  return {match["name"]: int(match["label"]) for match in map(re.compile(pattern).fullmatch, lines)}


def subset_labels(builder, split, name_of) -> dict[str, int]:
  source = builder.as_data_source(split)
  return {name_of(source[i]["file_name"].decode()): int(source[i]["label"]) for i in range(len(source))}


def _assert_rafdb_subsets(builder, emo_label) -> None:
  test = subset_labels(builder, "test", lambda name: name.removesuffix(".jpg"))
  for split, (file_name, pattern) in {
      "test_occlusion": ("rafdb_occlusion_list.txt", r"(?P<name>test_\d+)_aligned (?P<label>\d) 1\r"),
      "test_pose30": ("val_raf_db_list.txt", r"(?P<label>\d)/(?P<name>test_\d+)_aligned\.jpg"),
      "test_pose45": ("val_raf_db_list_45.txt", r"(?P<label>\d)/(?P<name>test_\d+)_aligned\.jpg")}.items():
    expected = listed(emo_label / file_name, pattern)
    assert expected and subset_labels(builder, split, lambda name: name.removesuffix(".jpg")) == expected
    assert all(test[name] == label for name, label in expected.items())


@pytest.mark.integration
def test_rafdb_command_writes_what_the_builder_prepares(tmp_path):
  out = tmp_path / "rafdb"
  assert f"python -m fer_jax.data.prepare --dataset=rafdb --manual_dir={out} --data_dir=" in _generate("rafdb", out)
  lines = (out / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
  assert lines[0].startswith("train_00001.jpg ") and "test_0001.jpg" in {line.split()[0] for line in lines}
  with Image.open(out / "Image" / "aligned" / "train_00001_aligned.jpg") as image:
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (100, 100))

  builder = build("rafdb", out, tmp_path / "tfds")
  _assert_rafdb_counts(builder)
  _assert_rafdb_subsets(builder, out / "EmoLabel")
  example = builder.as_data_source("train")[0]
  label_of = {line.split()[0]: int(line.split()[1]) - 1 for line in lines}
  assert int(example["label"]) == label_of[example["file_name"].decode()]


@pytest.mark.integration
def test_rafdb_aligned224_command_writes_what_the_builder_prepares(tmp_path):
  out = tmp_path / "rafdb224"
  assert (f"python -m fer_jax.data.prepare --dataset=rafdb/aligned224 --manual_dir={out} --data_dir="
          in _generate("rafdb_aligned224", out))
  train = (out / "EmoLabel" / "train.txt").read_text().splitlines()
  test = (out / "EmoLabel" / "test.txt").read_text().splitlines()
  assert train[0].startswith("train_00001.jpg ") and test[0].startswith("test_0001.jpg ")
  assert all(line.startswith("train_") for line in train) and all(line.startswith("test_") for line in test)
  assert not (out / "EmoLabel" / "list_patition_label.txt").exists()
  with Image.open(out / "Image" / "aligned_224" / "test_0001.jpg") as image:
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (224, 224))

  builder = build("rafdb/aligned224", out, tmp_path / "tfds")
  _assert_rafdb_counts(builder)
  example = builder.as_data_source("test")[0]
  label_of = {line.split()[0]: int(line.split()[1]) - 1 for line in train + test}
  assert int(example["label"]) == label_of[example["file_name"].decode()]
  assert example["image"].shape == (224, 224, 3)


def test_rafdb_aligned224_has_the_labels_of_rafdb(tmp_path):
  for dataset in ("rafdb", "rafdb_aligned224"):
    generate_layout.generate(dataset, os.fspath(tmp_path / dataset), scale=SCALE, seed=2)
  basic = (tmp_path / "rafdb" / "EmoLabel" / "list_patition_label.txt").read_text()
  emo = tmp_path / "rafdb_aligned224" / "EmoLabel"
  assert basic == (emo / "train.txt").read_text() + (emo / "test.txt").read_text()


@pytest.mark.integration
def test_fer2013_command_writes_the_csv_the_builder_prepares(tmp_path):
  out = tmp_path / "fer2013"
  assert f"python -m fer_jax.data.prepare --dataset=fer2013 --manual_dir={out} --data_dir=" in _generate("fer2013", out)
  lines = (out / "fer2013.csv").read_text().splitlines()
  assert lines[0] == "emotion,pixels,Usage"
  rows = [line.split(",") for line in lines[1:]]
  usages = [usage for _, _, usage in rows]
  assert usages == sorted(usages, key=["Training", "PublicTest", "PrivateTest"].index)  # the real file's order
  pixels = np.array(rows[0][1].split(), dtype=int)
  assert pixels.size == 48 * 48 and 0 <= pixels.min() and pixels.max() <= 255 and pixels.std() > 5

  builder = build("fer2013", out, tmp_path / "tfds")
  for split in ("train", "public_test", "private_test"):
    expected = generate_layout.class_counts(generate_layout.FER2013_COUNTS[split], SCALE)
    assert label_counts(builder, split, 7) == expected
  example = builder.as_data_source("private_test")[0]
  line = int(example["file_name"].decode().rsplit(":", 1)[1])  # "fer2013.csv:LINE", 1-based
  emotion, row_pixels, usage = lines[line - 1].split(",")
  assert (int(example["label"]), usage) == (int(emotion), "PrivateTest")
  assert example["image"].shape == (48, 48, 1)
  assert example["image"].ravel().tolist() == [int(v) for v in row_pixels.split()]


@pytest.mark.integration
def test_affectnet_layout_prepares_whole_and_face_cropped(tmp_path):
  out = tmp_path / "affectnet"
  counts = generate_layout.generate("affectnet", os.fspath(out), scale=SCALE, seed=3)
  assert counts["validation"] == [1] * 8
  sizes = set()
  for path in list((out / "Manually_Annotated_Images").glob("*/*.jpg"))[:40]:
    with Image.open(path) as image:
      sizes.add(image.size)
      assert image.format == "JPEG" and all(130 <= side <= 1000 for side in image.size)
  assert len(sizes) > 20 and any(w != h for w, h in sizes)

  for config in ("classes8", "classes8_facecrop"):
    builder = build(f"affectnet/{config}", out, tmp_path / "tfds")
    for split in ("train", "validation"):
      assert label_counts(builder, split, 8) == counts[split]
  lists = out / "Manually_Annotated_file_lists"
  stem = lambda name: name.split("/")[1].removesuffix(".jpg")  # noqa: E731
  for split, (file_name, pattern) in {
      "validation_occlusion": ("occlusion_affectnet_list.txt", r"val/(?P<label>\d)/(?P<name>[0-9a-f]{56})/"),
      "validation_pose30": ("pose_30_affectnet_list.txt", r"(?P<label>\d)/(?P<name>[0-9a-f]{56})\.jpg"),
      "validation_pose45": ("pose_45_affectnet_list.txt", r"(?P<label>\d)/(?P<name>[0-9a-f]{56})/8\.jpg")}.items():
    expected = listed(lists / file_name, pattern)
    assert expected and subset_labels(builder, split, stem) == expected
  face = builder.as_data_source("validation")[0]["image"]
  assert face.shape[0] == face.shape[1] >= 58  # the square face box, wholly inside the image


def test_ferplus_layout_prepares_with_its_subsets(tmp_path):
  out = tmp_path / "ferplus"
  counts = generate_layout.generate("ferplus", os.fspath(out), scale=SCALE, seed=4)
  builder = build("ferplus", out, tmp_path / "tfds")
  to_ferplus = [labels.CLASS_ORDERS["ferplus"].index(name) for name in labels.CLASS_ORDERS["fer2013"]]
  for split in ("train", "validation", "test"):  # 8 of 10 votes: the majority is the row's emotion
    expected = np.bincount(to_ferplus, weights=counts[split], minlength=8).astype(int).tolist()
    assert label_counts(builder, split, 8) == expected
  test = subset_labels(builder, "test", lambda name: name)
  name_of = lambda name: name.removeprefix("FER2013Test/")  # noqa: E731
  for split, (file_name, pattern) in {
      "test_occlusion": ("jianfei_occlusion_list.txt", r"(?P<label>\d)_(?P<name>fer\d{7}\.png) 8 0\r"),
      "test_pose30": ("pose_30_ferplus_list.txt", r"(?P<label>\d)/(?P<name>fer\d{7})\.jpg"),
      "test_pose45": ("pose_45_ferplus_list.txt", r"(?P<label>\d)/(?P<name>fer\d{7})\.jpg")}.items():
    expected = {name.removesuffix(".png") + ".png": label for name, label in listed(out / file_name, pattern).items()}
    assert expected and subset_labels(builder, split, name_of) == expected
    assert all(test[f"FER2013Test/{name}"] == label for name, label in expected.items())
  with open(out / "fer2013new.csv") as f:
    assert f.readline().strip() == ("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
                                    "unknown,NF")


def test_output_depends_only_on_the_seed(tmp_path):
  for name, workers in (("a", 0), ("b", 2)):
    generate_layout.generate("rafdb", os.fspath(tmp_path / name), scale=SCALE, seed=1, workers=workers)
  for relative in ("EmoLabel/list_patition_label.txt", "Image/aligned/test_0002_aligned.jpg"):
    assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
  for name, workers in (("c", 0), ("d", 2)):
    generate_layout.generate("fer2013", os.fspath(tmp_path / name), scale=SCALE, seed=1, workers=workers)
  assert (tmp_path / "c" / "fer2013.csv").read_bytes() == (tmp_path / "d" / "fer2013.csv").read_bytes()
  with pytest.raises(ValueError, match="not empty"):
    generate_layout.generate("rafdb", os.fspath(tmp_path / "a"), scale=SCALE)


def test_a_run_interrupted_mid_write_is_started_over_by_the_same_command(tmp_path, monkeypatch):
  """After Ctrl-C the same command refused its own half-written --out ("not empty"), which the user had to delete."""
  out, write_images = os.fspath(tmp_path / "out"), generate_layout.write_images

  def interrupted(jobs, workers):
    write_images(jobs[:3], workers)
    raise KeyboardInterrupt

  monkeypatch.setattr(generate_layout, "write_images", interrupted)
  with pytest.raises(KeyboardInterrupt):
    generate_layout.generate("rafdb", out, scale=SCALE, seed=1)
  monkeypatch.setattr(generate_layout, "write_images", write_images)
  generate_layout.generate("rafdb", out, scale=SCALE, seed=1)
  generate_layout.generate("rafdb", os.fspath(tmp_path / "straight"), scale=SCALE, seed=1)
  listing = lambda folder: sorted(os.path.relpath(os.path.join(root, name), folder)
                                  for root, _, names in os.walk(folder) for name in names)
  assert listing(out) == listing(tmp_path / "straight") and generate_layout.INCOMPLETE not in listing(out)
  with pytest.raises(ValueError, match="not empty"):  # a complete layout is never cleared
    generate_layout.generate("rafdb", out, scale=SCALE, seed=1)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_a_scale_that_is_not_a_positive_number_is_refused_before_anything_is_written(tmp_path, scale):
  """--scale=nan passed the check, crashed in int() and left a half-written --out, which a rerun refused."""
  with pytest.raises(ValueError, match=f"--scale must be a positive number, got {scale}."):
    generate_layout.generate("rafdb", os.fspath(tmp_path / "out"), scale=scale)
  assert not (tmp_path / "out").exists()


def test_the_printed_prepare_command_quotes_paths_for_the_shell(tmp_path):
  out = tmp_path / "gen dir's"
  result = {"train": [1] * 7, "test": [1] * 7, "bytes": 0, "seconds": 0.0}
  command = generate_layout.summary("rafdb", os.fspath(out), result).splitlines()[-1]
  assert shlex.split(command)[-2:] == [f"--manual_dir={out}", f"--data_dir={out}_tfds"]


@pytest.mark.integration
def test_command_refuses_a_non_empty_out_with_status_2(tmp_path):
  (tmp_path / "kept.txt").write_text("not to be mixed with a layout")
  result = run_command("fer_jax.data.generate_layout", "--dataset=rafdb", f"--out={tmp_path}", f"--scale={SCALE}")
  assert_user_error(result, f"Cannot write the rafdb layout: --out {tmp_path} is not empty; choose a new folder.")
  assert [path.name for path in tmp_path.iterdir()] == ["kept.txt"]
  result = run_command("fer_jax.data.generate_layout", "--dataset=rafdb", f"--out={tmp_path / 'new'}", "--workers=-1")
  assert_user_error(result, "--workers=-1: -1 is not")  # it was taken, and the pool refused it mid-run
  assert not (tmp_path / "new").exists()
