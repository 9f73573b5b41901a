"""`python -m fer_jax.data.prepare` on bad input: exit status 2 and one message naming the file and the fix.

Each test writes a tiny copy of an owner's layout (tests/reference/datasets.py), breaks one thing
and runs the real command.
"""

import collections
import subprocess
import sys

import numpy as np
import pytest

from fer_jax.data import builder_utils
from fer_jax.data.prepare import make_builder
from reference import datasets as fx
from helpers import ROOT, assert_user_error, run_command

pytestmark = pytest.mark.integration  # every test runs fer_jax.data.prepare in a subprocess


def prepare(dataset, manual_dir, data_dir, *flags, obey_permissions=False):
  return run_command("fer_jax.data.prepare", f"--dataset={dataset}", f"--manual_dir={manual_dir}",
                     f"--data_dir={data_dir}", *flags, obey_permissions=obey_permissions)


def replace_line(path, number: int, text: str) -> None:
  lines = path.read_text().splitlines()
  lines[number - 1] = text
  path.write_text("\n".join(lines) + "\n")


def test_affectnet_training_csv_with_only_its_header(tmp_path):
  fx.write_affectnet_original(tmp_path / "manual")
  training_csv = tmp_path / "manual" / "Manually_Annotated_file_lists" / "training.csv"
  training_csv.write_text(training_csv.read_text().splitlines()[0] + "\n")
  result = prepare("affectnet", tmp_path / "manual", tmp_path / "tfds")
  assert_user_error(result, f"{training_csv} gives no examples for the 'train' split: it holds no rows",
                    "Restore it, complete, from the owners' download", "Manually_Annotated_file_lists")
  assert "No examples were yielded" not in result.stderr


def test_class_folders_without_images(tmp_path):
  fx.write_fedro(tmp_path / "manual")
  for image in (tmp_path / "manual" / "FED_RO_crop").glob("*/*.jpg"):
    image.unlink()
  result = prepare("fedro", tmp_path / "manual", tmp_path / "tfds")
  assert_user_error(result, f"{tmp_path / 'manual' / 'FED_RO_crop'} gives no examples for the 'test' split",
                    "no rows or images", "Restore it, complete, from the owners' download")


def test_split_whose_images_are_all_skipped(tmp_path):
  fx.write_fedro(tmp_path / "manual")
  for image in (tmp_path / "manual" / "FED_RO_crop").glob("*/*.jpg"):
    fx.corrupt(image)
  result = prepare("fedro", tmp_path / "manual", tmp_path / "tfds", "--skip_corrupt")
  assert_user_error(result, f"Every image {tmp_path / 'manual' / 'FED_RO_crop'} lists for the 'test' split is "
                    "unreadable (14 skipped, e.g. FED_RO_crop/anger/anger_0.jpg)", "Replace them from the owners' "
                    "download")


def test_affectnet_later_release_image_without_expression_annotation(tmp_path):
  fx.write_affectnet_later(tmp_path / "manual")
  annotations = tmp_path / "manual" / "train_set" / "annotations"
  for image_id in (2, 5):
    (annotations / f"{image_id}_exp.npy").unlink()
  for flags in ([], ["--skip_corrupt"]):
    result = prepare("affectnet", tmp_path / "manual", tmp_path / "tfds", *flags)
    assert_user_error(result, f"2 images in {tmp_path / 'manual' / 'train_set' / 'images'} have no expression "
                      f"annotation in {annotations} (missing: 2_exp.npy, 5_exp.npy)",
                      "Restore the annotations folder from the owners' download",
                      "--skip_corrupt skips unreadable images only")


@pytest.mark.parametrize("given, meant", [("rafdb_aligned224", "rafdb/aligned224"), ("RAF-DB", "rafdb"),
                                         ("ferplus_plurality", "ferplus/plurality"), ("nosuchset", None)])
def test_a_misspelt_data_set_is_answered_with_the_one_meant(given, meant):
  """generate_layout's --dataset=rafdb_aligned224 given to prepare got the list of names alone, without its variants."""
  with pytest.raises(builder_utils.DataError) as error:
    make_builder(given)
  message = str(error.value)
  assert message.startswith(f"Unknown data set {given!r}" + (f" (did you mean {meant}?)" if meant else ";"))
  assert "(with /VARIANT where a set has several, docs/data.md)" in message


def test_missing_manual_dir(tmp_path):
  result = prepare("rafdb", tmp_path / "not_there", tmp_path / "tfds")
  assert_user_error(result, f"--manual_dir {tmp_path / 'not_there'} is not a folder",
                    "Request RAF-DB at http://www.whdeng.cn/raf/model1.html", "EmoLabel/list_patition_label.txt")


def test_a_manual_dir_naming_a_file_is_answered_with_its_folder(tmp_path):
  """--manual_dir=…/fer2013.csv was "not a folder", its folder unnamed."""
  csv_file = tmp_path / "fer2013" / "fer2013.csv"
  csv_file.parent.mkdir()
  csv_file.write_text("emotion,pixels,Usage\n")
  assert_user_error(prepare("fer2013", csv_file, tmp_path / "tfds"),
                    f"--manual_dir {csv_file} is a file: pass the download's folder, which holds it as the layout "
                    f"below shows (for a file at its top, --manual_dir={csv_file.parent}).")


def test_a_download_not_yet_extracted_is_named(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "basic.zip").write_bytes(b"PK")
  result = prepare("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert_user_error(result, f"{tmp_path / 'manual'} holds basic.zip: extract it there first.")


def test_rafdb_label_out_of_range_names_file_and_line(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  label_file = tmp_path / "manual" / "basic" / "EmoLabel" / "list_patition_label.txt"
  replace_line(label_file, 3, "train_00003.jpg 9")
  result = prepare("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert_user_error(result, f"{label_file}, line 3: label '9' is not one of [1, 2, 3, 4, 5, 6, 7]",
                    "Correct the line or restore the file from the owners' download")


def test_fer2013_emotion_out_of_range_names_file_and_line(tmp_path):
  fx.write_fer2013(tmp_path / "manual")
  csv = tmp_path / "manual" / "fer2013.csv"
  replace_line(csv, 5, "7" + csv.read_text().splitlines()[4][1:])
  result = prepare("fer2013", tmp_path / "manual", tmp_path / "tfds")
  assert_user_error(result, f"{csv}, line 5: label '7' is not one of [0, 1, 2, 3, 4, 5, 6]", "Correct the line")


def test_fer2013_row_with_too_few_pixels_names_the_line(tmp_path):
  fx.write_fer2013(tmp_path / "manual")
  csv = tmp_path / "manual" / "fer2013.csv"
  pixels = " ".join(str(v) for v in np.zeros(48 * 47, np.uint8))
  replace_line(csv, 4, f"6,{pixels},PublicTest")
  result = prepare("fer2013", tmp_path / "manual", tmp_path / "tfds")
  assert_user_error(result, "Cannot read image fer2013.csv:4 (expected 2304 values in 0-255, got 2256",
                    "Replace it from the owners' download, or pass --skip_corrupt")


def test_unreadable_image_fails_or_is_skipped_with_skip_corrupt(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  image = tmp_path / "manual" / "basic" / "Image" / "aligned" / "test_0003_aligned.jpg"
  image.chmod(0o000)
  result = prepare("rafdb", tmp_path / "manual", tmp_path / "tfds", obey_permissions=True)
  assert_user_error(result, f"Cannot read image {image} ([Errno 13] Permission denied",
                    "Make it readable, or pass --skip_corrupt to skip unreadable images and count them")
  skipped = prepare("rafdb", tmp_path / "manual", tmp_path / "tfds", "--skip_corrupt", obey_permissions=True)
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  assert f"Skipping unreadable image {image}" in skipped.stderr
  assert f"test: {len(fx.RAFDB_TEST) - 1} examples" in skipped.stdout
  assert "skipped 1 unreadable images in test" in skipped.stdout


def test_read_only_data_dir(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  data_dir = tmp_path / "tfds"
  data_dir.mkdir(mode=0o555)
  result = prepare("rafdb", tmp_path / "manual", data_dir, obey_permissions=True)
  assert_user_error(result, f"--data_dir {data_dir} is not writable (Permission denied: {data_dir}/",
                    "Make it writable, or pass another --data_dir")


def read_train_labels(data_dir) -> dict[str, int]:
  source = make_builder("rafdb", str(data_dir)).as_data_source("train")
  return {source[i]["file_name"].decode(): int(source[i]["label"]) for i in range(len(source))}


def test_overwrite_rebuilds_and_a_failed_rebuild_keeps_the_prepared_copy(tmp_path):
  written = fx.write_rafdb(tmp_path / "manual")
  label_file = tmp_path / "manual" / "basic" / "EmoLabel" / "list_patition_label.txt"
  assert prepare("rafdb", tmp_path / "manual", tmp_path / "tfds").returncode == 0
  replace_line(label_file, 1, "train_00001.jpg 1")
  rebuilt = prepare("rafdb", tmp_path / "manual", tmp_path / "tfds", "--overwrite")
  assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
  assert f"rafdb/basic/1.0.0 in {tmp_path / 'tfds' / 'rafdb' / 'basic' / '1.0.0'}:\n  train: 8 examples" in rebuilt.stdout
  assert f"replaced the old one in {tmp_path / 'tfds' / 'rafdb' / 'basic' / '1.0.0'}." in rebuilt.stderr
  expected = {**written["labels"]["train"], "train_00001.jpg": 0}
  assert read_train_labels(tmp_path / "tfds") == expected
  per_class = collections.Counter(expected.values())
  names = make_builder("rafdb", str(tmp_path / "tfds")).info.features["label"].names
  assert f"train: 8 examples ({', '.join(f'{name} {per_class[i]}' for i, name in enumerate(names))})" in rebuilt.stdout

  replace_line(label_file, 3, "train_00003.jpg 9")
  result = prepare("rafdb", tmp_path / "manual", tmp_path / "tfds", "--overwrite")
  assert_user_error(result, f"{label_file}, line 3: label '9' is not one of")
  assert read_train_labels(tmp_path / "tfds") == expected  # the copy rebuilt before, whole
  assert sorted(path.name for path in (tmp_path / "tfds" / "rafdb" / "basic").iterdir()) == [".prepare.lock", "1.0.0"]


def test_ctrl_c_ends_with_one_line_and_status_130(tmp_path):
  """A real SIGINT, sent by the run to itself while it writes the third training example."""
  fx.write_rafdb(tmp_path / "manual")
  script = tmp_path / "interrupted_prepare.py"
  script.write_text(
      "import os, signal\n"
      "from fer_jax import cli\n"
      "from fer_jax.data import builder_utils, prepare\n"
      "from fer_jax.data.builders import rafdb\n"
      "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as a terminal's, whatever this test inherits
      "def interrupted(self, split, records):\n"
      "  for number, example in enumerate(builder_utils.ManualBuilder._generate_examples(self, split, records)):\n"
      "    if number == 2:\n"
      "      os.kill(os.getpid(), signal.SIGINT)\n"
      "    yield example\n"
      "rafdb.Rafdb._generate_examples = interrupted\n"
      "prepare.define_flags()\n"
      "cli.run(prepare.main)\n")
  result = subprocess.run([sys.executable, str(script), "--dataset=rafdb", f"--manual_dir={tmp_path / 'manual'}",
                           f"--data_dir={tmp_path / 'tfds'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 130, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.rstrip().endswith("Interrupted: rafdb was not built; a copy prepared before stays as it was. "
                                         "Run the same command to start again.")


def test_prepare_imports_no_jax(tmp_path):
  """Ctrl-C while JAX was being imported, in the run's first second, printed "Exception ignored in: <function
  _xla_gc_callback>" and the run went on; prepare needs no JAX."""
  fx.write_fedro(tmp_path / "manual")
  result = subprocess.run([sys.executable, "-X", "importtime", "-m", "fer_jax.data.prepare", "--dataset=fedro",
                           f"--manual_dir={tmp_path / 'manual'}", f"--data_dir={tmp_path / 'tfds'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
  assert "fer_jax.data.builders.fedro" in imported
  assert sorted(imported & {"jax", "flax"}) == []
