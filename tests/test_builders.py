"""The FER builders and `prepare` on tiny copies of the owners' layouts (tests/reference/datasets.py)."""

import errno
import functools
import io
import logging
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types

from reference import datasets as fx
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import builders
from fer_jax.data import decode
from fer_jax.data import labels
from fer_jax.data import pipeline
from fer_jax.data import prepare
from fer_jax.data import synthetic_faces
from fer_jax.data.builders import affectnet
from fer_jax.data.builders import fedro
from fer_jax.data.builders import fer2013
from fer_jax.data.builders import ferplus
from fer_jax.data.builders import rafdb
from fer_jax.data.builders import sfew
from fer_jax.data.builders import synthetic

tfds.disable_progress_bar()


def build(dataset, manual_dir, data_dir, skip_corrupt=False):
  builder = prepare.make_builder(dataset, os.fspath(data_dir), skip_corrupt)
  builder.download_and_prepare(file_format="array_record",
                               download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def read_records(source) -> list:
  return [source[i] for i in range(len(source))]


def read(builder, split) -> dict:
  return {example["file_name"].decode(): example for example in read_records(builder.as_data_source(split))}


def labels_of(examples: dict) -> dict:
  return {name: int(example["label"]) for name, example in examples.items()}


def assert_colour(image, rgb, tolerance=6):
  assert image.ndim == 3 and image.shape[2] == 3
  np.testing.assert_allclose(image.reshape(-1, 3).mean(0), rgb, atol=tolerance)


# Each set's label numbering in its owners' words, quoted: the builders store the owners' integers as they are, so
# `labels.CLASS_ORDERS` alone gives them their meaning (the fixtures above write integers: a swapped order would pass).
OWNERS_NUMBERING = {
    # Kaggle's FER2013 page: the `emotion` column.
    "fer2013": "0=Angry, 1=Disgust, 2=Fear, 3=Happy, 4=Sad, 5=Surprise, 6=Neutral",
    # RAF-DB's README, basic emotions (stored here from 0: the file's label − 1).
    "rafdb": "1: Surprise, 2: Fear, 3: Disgust, 4: Happiness, 5: Sadness, 6: Anger, 7: Neutral",
    # The header of FERPlus's fer2013new.csv: the vote columns after Usage and Image name, before unknown and NF.
    "ferplus": "neutral,happiness,surprise,sadness,anger,disgust,fear,contempt",
    # AffectNet's README, the expression column (8 None, 9 Uncertain and 10 No-Face are not kept).
    "affectnet8": "0: Neutral, 1: Happiness, 2: Sadness, 3: Surprise, 4: Fear, 5: Disgust, 6: Anger, 7: Contempt",
    # SFEW 2.0's class folders, numbered in their sorted order.
    "sfew": "Angry Disgust Fear Happy Neutral Sad Surprise",
}
OWNERS_WORDS = {"angry": "anger", "happy": "happiness", "sad": "sadness"}


@pytest.mark.parametrize("order", sorted(OWNERS_NUMBERING))
def test_class_orders_are_the_owners_numbering(order):
  words = re.findall(r"[a-z]+", OWNERS_NUMBERING[order].lower())
  assert labels.CLASS_ORDERS[order] == tuple(OWNERS_WORDS.get(word, word) for word in words)


def test_making_a_builder_of_an_unprepared_set_leaves_no_temporary_folder(tmp_path, monkeypatch):
  """TFDS looks for an unprepared set's information in its bucket, leaving an empty tmp*tfds folder
  each time; fer_jax's sets are never there, so their builders do not look."""
  temporary = tmp_path / "tmp"
  temporary.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", os.fspath(temporary))
  for builder_cls in [*builders.MANUAL.values(), synthetic.Synthetic]:
    builder = builder_cls(data_dir=os.fspath(tmp_path / "tfds"))
    assert builder.info.splits == {}  # nothing prepared, nothing read from anywhere
  assert list(temporary.iterdir()) == []


def test_the_built_in_sets_are_registered_once(monkeypatch):
  """builders.MANUAL is the one list of fer_jax's sets prepared from a download (prepare and decode each kept their
  own): prepare builds what it holds, decode reads its builder's CHANNELS, and NAMES (the sets an unknown name's
  message lists) adds the generated synthetic set."""
  assert builders.NAMES == (*builders.MANUAL, synthetic.Synthetic.name)
  grey_builder = type("Greyset", (), {"CHANNELS": 1})
  monkeypatch.setitem(builders.MANUAL, "greyset", grey_builder)
  assert prepare.builder_class("greyset") is grey_builder
  assert decode.stored_channels("greyset/some_config") == 1


def stored_image(info) -> tuple:
  """The image feature's shape and encoding ("" when kept as read), as features.json records them."""
  return info.features["image"].shape, info.features["image"].to_json_content().encoding_format


GREY = ((48, 48, 1), "png")
COLOUR = ((None, None, 3), "")


def test_a_manual_builder_stating_only_its_classes_gets_the_shared_info(tmp_path):
  class OwnClasses(fedro.Fedro, skip_registration=True):
    def _info(self):
      return self.face_info(labels.CLASS_ORDERS["sfew"])

  info = OwnClasses(data_dir=os.fspath(tmp_path)).info
  assert list(info.features) == ["image", "label", "file_name"]
  assert (stored_image(info), info.features["label"].names) == (COLOUR, list(labels.CLASS_ORDERS["sfew"]))
  assert (info.supervised_keys, info.description) == (("image", "label"), __doc__.strip())
  assert (str(info.version), info.release_notes) == ("1.0.0", {"1.0.0": "First release."})


@pytest.mark.parametrize("builder_cls,config,features,image,homepages", [
    (fer2013.Fer2013, None, [], GREY, [fer2013.HOMEPAGE]),
    (ferplus.Ferplus, "majority", ["votes"], GREY, ["https://github.com/microsoft/FERPlus"]),
    (ferplus.Ferplus, "distribution", ["votes", "vote_distribution"], GREY, ["https://github.com/microsoft/FERPlus"]),
    (rafdb.Rafdb, "aligned224", [], COLOUR, ["http://www.whdeng.cn/raf/model1.html"]),
    (affectnet.Affectnet, "classes7_facecrop", ["valence", "arousal", "annotation_index"], COLOUR,
     ["http://mohammadmahoor.com/affectnet/"]),
    (sfew.Sfew, "original", [], COLOUR, []),
    (fedro.Fedro, None, [], COLOUR, ["https://github.com/mysee1989/PG-CNN"]),
])
def test_each_builder_describes_its_set_as_prepared_copies_record_it(tmp_path, builder_cls, config, features, image,
                                                                     homepages):
  """What a prepared copy's dataset_info.json and features.json hold: changing it needs a new VERSION."""
  info = builder_cls(config=config, data_dir=os.fspath(tmp_path)).info
  assert list(info.features) == ["image", "label", "file_name", *features]
  assert stored_image(info) == image
  proto = info.as_proto
  assert (list(proto.location.urls), info.supervised_keys) == (homepages, ("image", "label"))
  assert (proto.description, proto.version) == (sys.modules[builder_cls.__module__].__doc__.strip(), "1.0.0")
  assert dict(proto.release_notes) == {"1.0.0": "First release."}


def test_the_synthetic_set_keeps_its_own_version_and_description(tmp_path):
  info = synthetic.Synthetic(config="tiny", data_dir=os.fspath(tmp_path)).info
  assert list(info.features) == ["image", "label"]
  assert stored_image(info) == ((32, 32, 3), "png")
  assert (str(info.version), info.description) == ("1.1.0", synthetic_faces.__doc__.strip())
  assert info.release_notes == {"1.1.0": "Larger faces and features, milder pose and occlusion.",
                                "1.0.0": "First release."}


# --------------------------------------------------------------------------------------------
# FER2013


@pytest.mark.parametrize("variant", ["kaggle", "icml"])
def test_fer2013_reads_both_csv_variants(tmp_path, variant):
  expected = fx.write_fer2013(tmp_path / "manual", variant)
  builder = build("fer2013", tmp_path / "manual", tmp_path / "tfds")
  assert builder.info.features["label"].names == list(labels.CLASS_ORDERS["fer2013"])
  for split, rows in expected.items():
    examples = read(builder, split)
    assert labels_of(examples) == {name: label for name, (label, _) in rows.items()}
    for name, (_, pixels) in rows.items():
      np.testing.assert_array_equal(examples[name]["image"], pixels[..., None])


def test_fer2013_bad_pixel_row_is_skipped_and_counted(tmp_path):
  fx.write_fer2013(tmp_path / "manual")
  csv = tmp_path / "manual" / "fer2013.csv"
  lines = csv.read_text().splitlines()
  lines[3] = lines[3].replace(" ", " 999 ", 1)  # line 4: 2305 values, one out of range
  csv.write_text("\n".join(lines) + "\n")
  with pytest.raises(builder_utils.DataError, match=r"fer2013\.csv:4 .*--skip_corrupt"):
    build("fer2013", tmp_path / "manual", tmp_path / "tfds")
  builder = build("fer2013", tmp_path / "manual", tmp_path / "tfds", skip_corrupt=True)
  assert builder.skipped_images == {"public_test": ["fer2013.csv:4"]}
  assert builder.info.splits["public_test"].num_examples == 1


def test_fer2013_row_missing_a_column_names_file_and_line(tmp_path):
  fx.write_fer2013(tmp_path / "manual")
  csv = tmp_path / "manual" / "fer2013.csv"
  lines = csv.read_text().splitlines()
  lines[3] = lines[3].rsplit(",", 1)[0]  # line 4 without its Usage
  csv.write_text("\n".join(lines) + "\n")
  with pytest.raises(builder_utils.DataError, match=r"fer2013\.csv, line 4: expected 3 columns \(emotion, pixels, Usage\), "
                     "got 2"):
    build("fer2013", tmp_path / "manual", tmp_path / "tfds")


def test_fer2013_csv_without_its_header_is_named_in_a_short_message(tmp_path):
  """The message quoted the first row's 2,304 pixel values (9.5 KB) and did not say the header was missing."""
  fx.write_fer2013(tmp_path / "manual")
  csv = tmp_path / "manual" / "fer2013.csv"
  lines = csv.read_text().splitlines()
  csv.write_text("\n".join(lines[1:]) + "\n")
  with pytest.raises(builder_utils.DataError) as error:
    build("fer2013", tmp_path / "manual", tmp_path / "tfds")
  message = str(error.value)
  assert message.startswith(f"{csv}, line 1: header ['0', '") and len(message) < 400
  assert message.endswith("lacks the columns ['emotion', 'pixels', 'Usage']; expected emotion, pixels, Usage in any "
                          "order, as the first line.")


# --------------------------------------------------------------------------------------------
# FERPlus


def test_vote_rules_follow_ferplus():
  votes = lambda *v: np.array(v, np.int32)  # noqa: E731
  # Single votes are dropped before the > 50% test: 6 of 8 remaining votes.
  assert ferplus.majority_label(votes(6, 0, 1, 1, 0, 0, 0, 0, 2, 0)) == 0
  assert ferplus.majority_label(votes(4, 0, 0, 1, 3, 2, 0, 0, 0, 0)) is None  # 4 of 9
  assert ferplus.majority_label(votes(1, 0, 0, 0, 0, 0, 0, 0, 8, 1)) is None  # unknown wins
  assert ferplus.plurality_label(votes(3, 3, 0, 0, 0, 0, 0, 0, 2, 2)) == 0  # first on ties
  assert ferplus.plurality_label(votes(0, 0, 0, 0, 0, 0, 0, 0, 1, 9)) is None  # not a face
  np.testing.assert_allclose(ferplus.vote_distribution(votes(4, 0, 0, 1, 3, 2, 0, 0, 0, 0)),
                             [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0])
  # Unknown tied behind an emotion is not taken; fear alone holds 6 of 10 votes.
  np.testing.assert_allclose(ferplus.vote_distribution(votes(0, 0, 0, 0, 0, 0, 6, 0, 4, 0)),
                             [0, 0, 0, 0, 0, 0, 1, 0])
  assert ferplus.vote_distribution(votes(2, 2, 2, 2, 2, 0, 0, 0, 0, 0)) is None  # 5 classes taken
  assert ferplus.vote_distribution(votes(0, 0, 0, 0, 0, 0, 0, 0, 9, 1)) is None


@pytest.mark.parametrize("config", ["majority", "plurality", "distribution"])
def test_ferplus_configs_from_generated_folders(tmp_path, config):
  written = fx.write_ferplus(tmp_path / "manual")
  builder = build(f"ferplus/{config}", tmp_path / "manual", tmp_path / "tfds")
  assert builder.info.features["label"].names == list(labels.CLASS_ORDERS["ferplus"])
  for split, folder in (("train", "FER2013Train"), ("validation", "FER2013Valid"), ("test", "FER2013Test")):
    examples = read(builder, split)
    expected = fx.FERPLUS_LABELS[config]
    assert labels_of(examples) == {f"{folder}/{name}": label for name, label in expected.items()
                                   if written["split"][name] == split}
    for file_name, example in examples.items():
      name = file_name.split("/")[1]
      np.testing.assert_array_equal(example["votes"], written["votes"][name])
      np.testing.assert_array_equal(example["image"], written["pixels"][name][..., None])
      if config == "distribution":
        distribution = ferplus.vote_distribution(np.array(written["votes"][name]))
        np.testing.assert_allclose(example["vote_distribution"], distribution)


def test_ferplus_png_of_another_size_is_refused_by_name(tmp_path):
  """FERPlus's features declare 48×48: a 100×100 PNG was stored, and runs decoding the set at 48² shrank it."""
  fx.write_ferplus(tmp_path / "manual")
  png = tmp_path / "manual" / "data" / "FER2013Train" / "fer0000000.png"
  Image.new("L", (100, 90)).save(png)
  with pytest.raises(builder_utils.DataError) as error:
    build("ferplus", tmp_path / "manual", tmp_path / "tfds", skip_corrupt=True)
  assert str(error.value) == (f"Image {png} is 100×90 pixels, where every image of the set is 48×48: restore it from "
                              "the owners' download.")


def test_ferplus_pngs_named_in_upper_case_are_taken_for_pngs_and_named(tmp_path):
  """`.PNG` files were not seen: the set was regenerated from fer2013.csv, or refused for lack of it."""
  fx.write_ferplus(tmp_path / "manual")
  folder = tmp_path / "manual" / "data" / "FER2013Train"
  for png in folder.glob("*.png"):
    png.rename(png.with_suffix(".PNG"))
  (tmp_path / "manual" / "fer2013.csv").unlink()
  with pytest.raises(builder_utils.DataError) as error:
    build("ferplus", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"Image {folder / 'fer0000000.png'}, listed in {folder / 'label.csv'}, does not exist; "
                              "fer0000000.PNG is there: rename it fer0000000.png.")


def test_ferplus_label_csv_without_box_and_images_regenerated_from_fer2013(tmp_path):
  written = fx.write_ferplus(tmp_path / "manual", box=False, pngs=False, under_data=False)
  builder = build("ferplus", tmp_path / "manual", tmp_path / "tfds")
  examples = read(builder, "validation")
  assert labels_of(examples) == {"FER2013Valid/fer0000006.png": 3, "FER2013Valid/fer0000007.png": 5}
  np.testing.assert_array_equal(examples["FER2013Valid/fer0000007.png"]["image"][..., 0],
                                written["pixels"]["fer0000007.png"])


def test_ferplus_votes_from_fer2013new_without_label_csv(tmp_path):
  fx.write_ferplus(tmp_path / "manual", label_csv=False, pngs=False)
  builder = build("ferplus", tmp_path / "manual", tmp_path / "tfds")
  # fer2013new.csv gives fer0000007 seven anger votes where label.csv gives disgust.
  assert labels_of(read(builder, "validation"))["FER2013Valid/fer0000007.png"] == 4


@pytest.mark.parametrize("votes_file", ["label.csv", "fer2013new.csv"])
def test_ferplus_an_image_listed_again_is_kept_once_or_refused_with_other_votes(tmp_path, votes_file):
  """Its last row used to win silently: a second row with other votes changed the image's label."""
  fx.write_ferplus(tmp_path / "manual", label_csv=votes_file == "label.csv")
  path = tmp_path / "manual" / ("data/FER2013Valid/label.csv" if votes_file == "label.csv" else "fer2013new.csv")
  lines = path.read_text().splitlines()
  number, row = next((n, line) for n, line in enumerate(lines, start=1) if "fer0000006.png" in line)
  path.write_text("\n".join(lines + [row]) + "\n")
  once = read(build("ferplus", tmp_path / "manual", tmp_path / "tfds"), "validation")
  assert list(once).count("FER2013Valid/fer0000006.png") == 1 and labels_of(once)["FER2013Valid/fer0000006.png"] == 3
  fields = row.split(",")
  other_votes = ",".join(fields[:-10] + fields[-1:] + fields[-10:-1])  # each vote one column on
  assert other_votes != row
  path.write_text("\n".join(lines + [other_votes]) + "\n")
  if votes_file == "fer2013new.csv":  # the real file names fer0033120.png so: the first row's votes are kept
    again = read(build("ferplus", tmp_path / "manual", tmp_path / "tfds2"), "validation")
    assert labels_of(again)["FER2013Valid/fer0000006.png"] == 3
    return
  with pytest.raises(builder_utils.DataError, match=rf"{votes_file}, line {len(lines) + 1}: fer0000006.png has other "
                                                    rf"votes than on line {number}\. Keep one of the rows"):
    build("ferplus", tmp_path / "manual", tmp_path / "tfds2")


@pytest.mark.parametrize("label_csv", [True, False])
def test_ferplus_regenerated_image_named_on_two_rows_is_its_last_rows_once(tmp_path, label_csv):
  """fer2013new.csv names fer0006953, fer0008403, fer0011785 and fer0033120 on two rows each (the last with other
  votes); generate_training_data.py writes the later row's pixels over the earlier's."""
  written = fx.write_ferplus(tmp_path / "manual", pngs=False, label_csv=label_csv)
  new_csv, fer_csv = tmp_path / "manual" / "fer2013new.csv", tmp_path / "manual" / "fer2013.csv"
  row = next(line for line in new_csv.read_text().splitlines() if "fer0000006.png" in line)
  fields = row.split(",")
  new_csv.write_text(new_csv.read_text() + ",".join(fields[:-10] + fields[-1:] + fields[-10:-1]) + "\n")
  later = np.full((48, 48), 77, np.uint8)
  fer_csv.write_text(fer_csv.read_text() + f"0,{' '.join(map(str, later.ravel()))},PublicTest\n")
  examples = read(build("ferplus", tmp_path / "manual", tmp_path / "tfds"), "validation")
  assert list(examples).count("FER2013Valid/fer0000006.png") == 1
  np.testing.assert_array_equal(examples["FER2013Valid/fer0000006.png"]["image"][..., 0], later)
  np.testing.assert_array_equal(examples["FER2013Valid/fer0000006.png"]["votes"], written["votes"]["fer0000006.png"])


def test_ferplus_bad_vote_names_file_and_line(tmp_path):
  fx.write_ferplus(tmp_path / "manual")
  label_csv = tmp_path / "manual" / "data" / "FER2013Valid" / "label.csv"
  label_csv.write_text(label_csv.read_text().replace(",10,", ",x,"))
  with pytest.raises(builder_utils.DataError, match=r"FER2013Valid/label\.csv, line 1: vote count 'x' is not "
                                                             r"one of \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10\]"):
    build("ferplus", tmp_path / "manual", tmp_path / "tfds")


@pytest.mark.parametrize("config", ["majority", "plurality"])
def test_ferplus_occlusion_and_pose_subsets_through_prepare(tmp_path, caplog, config):
  written = fx.write_ferplus(tmp_path / "manual", subsets=True)
  with caplog.at_level(logging.INFO):
    builder = prepare.prepare(f"ferplus/{config}", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  assert set(builder.info.splits) == {"train", "validation", "test", "test_occlusion", "test_pose30", "test_pose45"}
  for split, expected in fx.FERPLUS_SUBSETS[config].items():
    examples = read(builder, split)
    assert labels_of(examples) == {f"FER2013Test/{name}": label for name, label in expected.items()}
    for file_name, example in examples.items():
      np.testing.assert_array_equal(example["image"][..., 0], written["pixels"][file_name.split("/")[1]])
  assert "pose_30_ferplus_list.txt: 1 of 1 labels differ from the data set's own" in caplog.text
  assert "pose_45_ferplus_list.txt: 1 repeated entries are kept once" in caplog.text
  dropped = "jianfei_occlusion_list.txt: 1 listed images are left out: this config drops their labels"
  assert (dropped in caplog.text) == (config == "majority")  # fer0000009 has no majority label


def test_ferplus_label_csv_missing_in_one_folder_is_refused_not_mixed_with_fer2013new(tmp_path):
  fx.write_ferplus(tmp_path / "manual")
  (tmp_path / "manual" / "data" / "FER2013Test" / "label.csv").unlink()
  with pytest.raises(builder_utils.DataError) as error:
    build("ferplus", tmp_path / "manual", tmp_path / "tfds")
  message = str(error.value)
  assert f"{tmp_path / 'manual'} has {tmp_path / 'manual' / 'data' / 'FER2013Train' / 'label.csv'} but lacks " \
         "FER2013Test/label.csv" in message
  assert "move them all away to take every split's votes from fer2013new.csv" in message


@pytest.mark.parametrize("row,expected", [
    ('fer0000006.png,"(0, 0, 48, 48)",0,0,0,10,0,0,0,0,0',
     "line 1: expected 12 columns (image name, face box, neutral, happiness, surprise, sadness, anger, disgust, fear, "
     "contempt, unknown, NF), got 11."),
    ("fer0000006.png,0,0,0,10,0,0,0,0,0", "line 1: expected 11 columns (image name, neutral, happiness"),
    (',"(0, 0, 48, 48)",0,0,0,10,0,0,0,0,0,0', "line 1: the image name (first column) is empty"),
])
def test_ferplus_malformed_label_csv_row_is_named(tmp_path, row, expected):
  fx.write_ferplus(tmp_path / "manual")
  label_csv = tmp_path / "manual" / "data" / "FER2013Valid" / "label.csv"
  lines = label_csv.read_text().splitlines()
  assert lines[0] == 'fer0000006.png,"(0, 0, 48, 48)",0,0,0,10,0,0,0,0,0,0'
  label_csv.write_text("\n".join([row, *lines[1:]]) + "\n")
  with pytest.raises(builder_utils.DataError) as error:
    build("ferplus", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value).startswith(f"{label_csv}, {expected}")


@pytest.mark.parametrize("repeated, other", [("fer2013.csv", "fer2013new.csv"), ("fer2013new.csv", "fer2013.csv")])
def test_ferplus_csvs_of_other_lengths_are_refused_not_paired_off_by_one(tmp_path, repeated, other):
  """A row repeated inside the last (PrivateTest) block shifted every later test image onto the next row's
  votes, and the build succeeded: the Usage check only sees a shift that crosses a block's end."""
  fx.write_ferplus(tmp_path / "manual", label_csv=False, pngs=False)
  path, other = tmp_path / "manual" / repeated, tmp_path / "manual" / other
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:11] + lines[10:]) + "\n")  # the first PrivateTest row twice
  with pytest.raises(builder_utils.DataError) as error:
    build("ferplus", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"{path} has more image rows than {other} (line {len(lines) + 1} on): the files are "
                              "not row-aligned, so images would be paired with other rows' votes. Restore both from "
                              "the owners' downloads.")


def test_ferplus_fer2013new_row_with_only_its_usage_names_file_and_line(tmp_path):
  fx.write_ferplus(tmp_path / "manual", label_csv=False, pngs=False)
  new_csv = tmp_path / "manual" / "fer2013new.csv"
  lines = new_csv.read_text().splitlines()
  lines[3] = "Training"
  new_csv.write_text("\n".join(lines) + "\n")
  with pytest.raises(builder_utils.DataError, match=r"fer2013new\.csv, line 4: expected 12 columns \(Usage, Image name, "
                     "neutral.*got 1"):
    build("ferplus", tmp_path / "manual", tmp_path / "tfds")


# --------------------------------------------------------------------------------------------
# RAF-DB


def test_rafdb_basic_with_occlusion_and_pose_subsets(tmp_path, caplog):
  written = fx.write_rafdb(tmp_path / "manual", subsets=True)
  with caplog.at_level(logging.WARNING):
    builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert set(builder.info.splits) == {"train", "test", "test_occlusion", "test_pose30", "test_pose45"}
  for split in ("train", "test"):
    examples = read(builder, split)
    assert labels_of(examples) == written["labels"][split]
    for name, example in examples.items():
      assert_colour(example["image"], written["colour"][name])
  test = written["labels"]["test"]
  subsets = {"test_occlusion": ["test_0002.jpg", "test_0005.jpg", "test_0006.jpg"],
             "test_pose30": ["test_0001.jpg", "test_0003.jpg", "test_0004.jpg"],
             "test_pose45": ["test_0004.jpg"]}
  for split, names in subsets.items():
    assert labels_of(read(builder, split)) == {name: test[name] for name in names}
  assert "rafdb_occlusion_list.txt: 1 of 3 labels differ" in caplog.text
  [sizes] = [record.getMessage() for record in caplog.records if "other sizes than published" in record.getMessage()]
  assert "rafdb/basic/1.0.0 has splits of other sizes than published: train 8 (published 12,271), test 6" in sizes
  assert "is in none of" not in caplog.text


def test_rafdb_with_two_of_the_three_subset_lists_warns_of_the_missing_one(tmp_path, caplog):
  fx.write_rafdb(tmp_path / "manual", subsets=True)
  (tmp_path / "manual" / "basic" / "EmoLabel" / "val_raf_db_list_45.txt").unlink()
  with caplog.at_level(logging.WARNING):
    builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert set(builder.info.splits) == {"train", "test", "test_occlusion", "test_pose30"}
  assert (f"val_raf_db_list_45.txt or val_raf_db_list_pose_45.txt is in none of {tmp_path / 'manual' / 'basic' / 'EmoLabel'}, "
          f"{tmp_path / 'manual'}, beside rafdb_occlusion_list.txt, val_raf_db_list.txt: the set will have no "
          "'test_pose45' split") in caplog.text


def test_rafdb_aligned224_reads_apvit_layout(tmp_path):
  written = fx.write_rafdb(tmp_path / "manual", aligned224=True)
  builder = build("rafdb/aligned224", tmp_path / "manual" / "basic", tmp_path / "tfds")
  examples = read(builder, "test")
  assert labels_of(examples) == written["labels"]["test"]
  assert examples["test_0001.jpg"]["image"].shape == (16, 16, 3)


def _rafdb_label_file(root, lines: list[str]) -> pathlib.Path:
  """RAF-DB's tiny copy with `lines` replacing the first lines of its label file."""
  fx.write_rafdb(root)
  label_file = root / "basic" / "EmoLabel" / "list_patition_label.txt"
  old = label_file.read_text().splitlines()
  label_file.write_text("\n".join([*lines, *old[len(lines):]]) + "\n")
  return label_file


def test_rafdb_label_lines_separated_by_any_whitespace(tmp_path):
  written = fx.write_rafdb(tmp_path / "written")
  _rafdb_label_file(tmp_path / "manual", ["train_00001.jpg\t5", "train_00002.jpg   4 "])
  builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "train")) == written["labels"]["train"]


def test_rafdb_label_line_of_three_fields_says_the_format(tmp_path):
  label_file = _rafdb_label_file(tmp_path / "manual", ["train_00001.jpg 5 2"])
  with pytest.raises(builder_utils.DataError) as error:
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value).startswith(f"{label_file}, line 1: 'train_00001.jpg 5 2' is not a line \"<image name> "
                                     '<label 1-7>" (as "train_00001.jpg 5")')


def test_rafdb_duplicate_label_lines_must_agree_and_are_kept_once_with_a_warning(tmp_path, caplog):
  label_file = _rafdb_label_file(tmp_path / "manual", ["train_00001.jpg 5", "train_00001.jpg 5"])
  builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "train"))["train_00001.jpg"] == 4
  assert builder.info.splits["train"].num_examples == len(fx.RAFDB_TRAIN) - 1  # line 2 replaced train_00002
  assert (f"RAF-DB: 1 label lines repeat an earlier line's image and label ({label_file}, line 2 repeats {label_file}, "
          "line 1); each image is kept once") in caplog.text
  label_file.write_text("train_00001.jpg 5\ntrain_00002.jpg 4\ntrain_00001_aligned.jpg 3\n")
  with pytest.raises(builder_utils.DataError) as error:
    build("rafdb", tmp_path / "manual", tmp_path / "tfds2")
  assert str(error.value).startswith(f"{label_file}, line 3: 'train_00001_aligned.jpg' is labelled 3, but {label_file}, "
                                     "line 1 gives it 5. Keep one of the lines")


def test_rafdb_names_map_to_the_official_apvit_table():
  # APViT remaps RAF-DB labels with (5, 2, 1, 4, 3, 0, 6); the name-based map must agree.
  names = tuple(rafdb.Rafdb(config="basic").info.features["label"].names)
  np.testing.assert_array_equal(labels.label_map(names, labels.CLASS_ORDERS["apvit7"]), [5, 2, 1, 4, 3, 0, 6])


# --------------------------------------------------------------------------------------------
# AffectNet


@pytest.mark.parametrize("config,num_classes", [("classes8", 8), ("classes7", 7)])
def test_affectnet_original_release(tmp_path, config, num_classes):
  written = fx.write_affectnet_original(tmp_path / "manual")
  builder = build(f"affectnet/{config}", tmp_path / "manual", tmp_path / "tfds")
  order = labels.CLASS_ORDERS[f"affectnet{num_classes}"]
  assert builder.info.features["label"].names == list(order)
  for split, rows in written["rows"].items():
    examples = read(builder, split)
    kept = {name: row for name, row in rows.items() if row[0] < num_classes}
    assert labels_of(examples) == {name: row[0] for name, row in kept.items()}
    for name, (_, valence, arousal, index) in kept.items():
      example = examples[name]
      assert (example["valence"], example["arousal"]) == pytest.approx((valence, arousal))
      assert example["annotation_index"] == index
      assert example["image"].shape == (12, 16, 3)  # CMYK and gray files decode to RGB too
      assert_colour(example["image"][0:2, 0:3], written["colour"][name], tolerance=10)


@pytest.mark.parametrize("config,num_classes", [("classes8", 8), ("classes7", 7)])
def test_affectnet_occlusion_and_pose_subsets_through_prepare(tmp_path, caplog, config, num_classes):
  written = fx.write_affectnet_original(tmp_path / "manual", subsets=True)
  with caplog.at_level(logging.INFO):
    builder = prepare.prepare(f"affectnet/{config}", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  assert set(builder.info.splits) == {"train", "validation", *written["subsets"]}
  rows = written["rows"]["validation"]
  for split, names in written["subsets"].items():
    examples = read(builder, split)
    assert labels_of(examples) == {name: rows[name][0] for name in names if rows[name][0] < num_classes}
    assert all(example["annotation_index"] == rows[name][3] for name, example in examples.items())
  assert "pose_30_affectnet_list.txt: 1 repeated entries are kept once" in caplog.text
  assert "pose_45_affectnet_list.txt: 1 of 2 labels differ from the data set's own" in caplog.text
  dropped = "occlusion_affectnet_list.txt: 1 listed images are left out: this config drops their labels"
  assert (dropped in caplog.text) == (num_classes == 7)  # contempt


def test_affectnet_training_cap_keeps_the_first_images_of_each_class_in_annotation_order(tmp_path):
  written = fx.write_affectnet_original(tmp_path / "manual")
  build("affectnet/classes8", tmp_path / "manual", tmp_path / "tfds")
  config = ml_collections.ConfigDict({
      "dataset": {"name": "affectnet/classes8", "data_dir": str(tmp_path / "tfds"), "class_order": "affectnet8"},
      "model": {"num_classes": 8}})
  split = pipeline.load_split(config, "train", max_per_class=1)
  examples = read_records(split.source)
  kept = {example["file_name"].decode(): int(label) for example, label in zip(examples, split.labels) if label >= 0}
  rows = written["rows"]["train"]
  first_of_class = {}
  for name, (code, *_, index) in sorted(rows.items(), key=lambda item: item[1][3]):
    if code < 8:
      first_of_class.setdefault(code, name)
  assert kept == {name: code for code, name in first_of_class.items()}
  assert len(kept) == 8 and sum(code == 1 for code, *_ in rows.values()) == 2  # one happy image dropped
  assert (pipeline.load_split(config, "train").labels >= 0).sum() == 9


def test_affectnet_training_cap_of_joined_splits_takes_their_parts_in_turn(tmp_path):
  """Each split's annotation_index starts at 0: train+validation kept the validation image of five classes whose
  first training image came later in training.csv than it in validation.csv."""
  written = fx.write_affectnet_original(tmp_path / "manual")
  build("affectnet/classes8", tmp_path / "manual", tmp_path / "tfds")
  config = ml_collections.ConfigDict({
      "dataset": {"name": "affectnet/classes8", "data_dir": str(tmp_path / "tfds"), "class_order": "affectnet8"},
      "model": {"num_classes": 8}})

  def kept(split_name):
    split = pipeline.load_split(config, split_name, max_per_class=1)
    return {example["file_name"].decode() for example, label in zip(read_records(split.source), split.labels)
            if label >= 0}

  first_of_training = kept("train")
  assert len(first_of_training) == 8 and first_of_training <= set(written["rows"]["train"])
  assert kept("train+validation") == first_of_training
  assert kept("validation+train") == set(written["rows"]["validation"])  # one image of each of the 8 codes


def test_affectnet_face_crop(tmp_path):
  fx.write_affectnet_original(tmp_path / "manual")
  builder = build("affectnet/classes8_facecrop", tmp_path / "manual", tmp_path / "tfds")
  examples = read(builder, "validation")
  assert len(examples) == 8
  for example in examples.values():
    assert example["image"].shape == (6, 8, 3)  # face_height × face_width
    assert_colour(example["image"][1:-1, 1:-1], fx.FACE_COLOUR, tolerance=12)


def test_affectnet_face_crop_of_a_sixteen_bit_grey_image_keeps_its_top_eight_bits(tmp_path):
  """It was stored all white, where the configs that keep whole images keep the top 8 bits."""
  written = fx.write_affectnet_original(tmp_path / "manual")
  name = next(iter(written["rows"]["validation"]))
  Image.fromarray(np.full((12, 16), 0x8040, np.uint16)).save(tmp_path / "manual" / "Manually_Annotated_Images" / name,
                                                            format="PNG")
  builder = build("affectnet/classes8_facecrop", tmp_path / "manual", tmp_path / "tfds")
  np.testing.assert_allclose(read(builder, "validation")[name]["image"], 0x80, atol=1)


def test_affectnet_later_release_npy_annotations(tmp_path):
  written = fx.write_affectnet_later(tmp_path / "manual")
  builder = build("affectnet/classes7", tmp_path / "manual", tmp_path / "tfds")
  examples = read(builder, "train")
  kept = {name: row for name, row in written["rows"]["train"].items() if row[0] < 7}
  assert labels_of(examples) == {name: row[0] for name, row in kept.items()}
  assert math.isnan(examples["train_set/images/4.jpg"]["valence"])  # its _val.npy is missing
  assert examples["train_set/images/5.jpg"]["arousal"] == pytest.approx(0.8)
  assert examples["train_set/images/5.jpg"]["annotation_index"] == 5
  assert len(read(builder, "validation")) == 7


@pytest.mark.parametrize("value", ["3", b"3", 3, 3.0])
def test_affectnet_npy_annotations_read_as_dan_reads_them(tmp_path, value):
  """An expression saved as bytes (np.array(b"3")) read as "b'3'" and was refused; DAN's int(np.load(...)) takes it."""
  from fer_jax.data.builders import affectnet  # pylint: disable=import-outside-toplevel
  np.save(tmp_path / "0_exp.npy", np.array(value))
  assert affectnet._npy_text(tmp_path / "0_exp.npy") == "3"  # pylint: disable=protected-access


def test_affectnet_face_box_outside_the_image_names_csv_line_even_with_skip_corrupt(tmp_path):
  fx.write_affectnet_original(tmp_path / "manual")
  csv = tmp_path / "manual" / "Manually_Annotated_file_lists" / "validation.csv"
  lines = csv.read_text().splitlines()
  fields = lines[2].split(",")
  fields[1:5] = ["40", "2", "8", "6"]  # face_x beyond the 16-pixel-wide image
  lines[2] = ",".join(fields)
  csv.write_text("\n".join(lines) + "\n")
  for skip_corrupt in (False, True):
    with pytest.raises(builder_utils.DataError) as error:
      build("affectnet/classes8_facecrop", tmp_path / "manual", tmp_path / "tfds", skip_corrupt)
    assert str(error.value).startswith(f"{csv}, line 3: the face box (face_x, face_y, face_width, face_height) "
                                       f"(40, 2, 8, 6) lies outside the 16×12 image {tmp_path / 'manual'}")


@pytest.mark.parametrize("field, value", [(1, "nan"), (4, "inf"), (7, "nan")])
def test_affectnet_csv_values_that_are_not_finite_numbers_name_the_line(tmp_path, field, value):
  """A face box of "nan" crashed in int() ("cannot convert float NaN to integer"), naming no file."""
  fx.write_affectnet_original(tmp_path / "manual")
  csv = tmp_path / "manual" / "Manually_Annotated_file_lists" / "validation.csv"
  lines = csv.read_text().splitlines()
  fields = lines[2].split(",")
  fields[field] = value
  lines[2] = ",".join(fields)
  csv.write_text("\n".join(lines) + "\n")
  with pytest.raises(builder_utils.DataError) as error:
    build("affectnet/classes8_facecrop", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == f"{csv}, line 3: {value!r} is not a number."


def test_affectnet_later_release_image_without_its_annotation_stops_the_build_whatever_its_suffix(tmp_path):
  """Only `*.jpg` was looked at: an unannotated `.jpeg` or `.JPG` was left out without a word."""
  fx.write_affectnet_later(tmp_path / "manual")
  images = tmp_path / "manual" / "val_set" / "images"
  for name in ("999.jpeg", "998.JPG", "997.jpg"):
    shutil.copy(images / "3.jpg", images / name)
  for skip_corrupt in (False, True):
    with pytest.raises(builder_utils.DataError) as error:
      build("affectnet", tmp_path / "manual", tmp_path / "tfds", skip_corrupt)
    annotations = images.parent / "annotations"
    assert str(error.value).startswith(f"3 images in {images} have no expression annotation in {annotations} "
                                       "(missing: 997_exp.npy, 998_exp.npy, 999_exp.npy).")


def test_affectnet_empty_annotation_file_is_named(tmp_path):
  fx.write_affectnet_later(tmp_path / "manual")
  empty = tmp_path / "manual" / "val_set" / "annotations" / "3_exp.npy"
  empty.write_bytes(b"")
  with pytest.raises(builder_utils.DataError, match=f"Cannot read the annotation {empty} \\(No data left in file\\)"):
    build("affectnet", tmp_path / "manual", tmp_path / "tfds")


def test_affectnet_face_crop_needs_the_original_release(tmp_path):
  fx.write_affectnet_later(tmp_path / "manual")
  with pytest.raises(builder_utils.DataError, match="already cropped: use config classes8"):
    build("affectnet/classes8_facecrop", tmp_path / "manual", tmp_path / "tfds")


def test_affectnet_header_spelt_in_another_case_is_taken_for_the_header(tmp_path):
  """A header `SubDirectory_FilePath,...` was read as an image row: "label 'expression' is not one of …"."""
  written = fx.write_affectnet_original(tmp_path / "manual")
  csv = tmp_path / "manual" / "Manually_Annotated_file_lists" / "training.csv"
  lines = csv.read_text().splitlines()
  assert lines[0].startswith("subDirectory_filePath,")
  csv.write_text("\n".join(["SubDirectory_FilePath" + lines[0][len("subDirectory_filePath"):], *lines[1:]]) + "\n")
  builder = build("affectnet", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "train")) == {name: row[0] for name, row in written["rows"]["train"].items()
                                               if row[0] < 8}


def test_affectnet_code_out_of_range_names_file_and_line(tmp_path):
  fx.write_affectnet_original(tmp_path / "manual")
  csv = tmp_path / "manual" / "Manually_Annotated_file_lists" / "validation.csv"
  lines = csv.read_text().splitlines()
  fields = lines[2].split(",")
  fields[6] = "11"
  lines[2] = ",".join(fields)
  csv.write_text("\n".join(lines) + "\n")
  with pytest.raises(builder_utils.DataError, match=r"validation\.csv, line 3: label '11'"):
    build("affectnet", tmp_path / "manual", tmp_path / "tfds")


def test_affectnet_image_listed_twice_names_the_file_and_both_lines(tmp_path):
  """A repeated training.csv row reached TFDS's duplicate-key check, which needs TensorFlow: four tracebacks."""
  fx.write_affectnet_original(tmp_path / "manual")
  csv = tmp_path / "manual" / "Manually_Annotated_file_lists" / "training.csv"
  lines = csv.read_text().splitlines()
  csv.write_text("\n".join([*lines, lines[1]]) + "\n")
  listed = lines[1].split(",")[0]
  with pytest.raises(builder_utils.DataError) as error:
    build("affectnet", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"The image {listed} is listed twice for the 'train' split: {csv}, line 2 and {csv}, "
                              f"line {len(lines) + 1}. Keep one of the rows.")


def test_affectnet_validation_image_in_the_training_list_is_warned_of(tmp_path, caplog):
  """It was accepted silently: the validation scores would count an image the model trained on."""
  fx.write_affectnet_original(tmp_path / "manual")
  lists = tmp_path / "manual" / "Manually_Annotated_file_lists"
  leaked = (lists / "validation.csv").read_text().splitlines()[1]
  training = (lists / "training.csv").read_text().splitlines()
  (lists / "training.csv").write_text("\n".join([*training, leaked]) + "\n")
  with caplog.at_level(logging.WARNING):
    build("affectnet", tmp_path / "manual", tmp_path / "tfds")
  warnings = [r.getMessage() for r in caplog.records if "'train' split are in" in r.getMessage()]
  assert warnings == [f"affectnet: 1 images of the 'train' split are in the 'validation' split too (e.g. "
                      f"{leaked.split(',')[0]}): a model trained on them would be scored on them. Remove them from "
                      f"one of {lists / 'training.csv'} and {lists / 'validation.csv'}, then prepare again with "
                      "--overwrite."]


# --------------------------------------------------------------------------------------------
# SFEW and FED-RO


@pytest.mark.parametrize("config", ["aligned", "original"])
def test_sfew_class_folders(tmp_path, config):
  written = fx.write_sfew(tmp_path / "manual")
  builder = build(f"sfew/{config}", tmp_path / "manual", tmp_path / "tfds")
  assert builder.info.features["label"].names == list(labels.CLASS_ORDERS["sfew"])
  for split, expected in written[config].items():
    examples = read(builder, split)
    assert labels_of(examples) == expected  # Thumbs.db is ignored
    for name, example in examples.items():
      assert_colour(example["image"], written["colour"][name], tolerance=0)


@pytest.mark.parametrize("dataset,write", [("sfew", fx.write_sfew), ("fedro", fx.write_fedro)])
def test_macos_metadata_in_class_folders_is_skipped(tmp_path, dataset, write):
  written = write(tmp_path / "manual")
  for image in list((tmp_path / "manual").rglob("*.[jp][pn]g")):
    (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # what macOS's zip puts there
    fx.write_image(image.parent / "__MACOSX" / f"._{image.name}", 0)
  builder = build(dataset, tmp_path / "manual", tmp_path / "tfds")
  split = "validation" if dataset == "sfew" else "test"
  expected = written["aligned"] if dataset == "sfew" else written
  assert labels_of(read(builder, split)) == expected[split]


def test_fedro_folders_in_affectnet_order(tmp_path):
  written = fx.write_fedro(tmp_path / "manual")
  builder = build("fedro", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "test")) == written["test"]
  names = tuple(builder.info.features["label"].names)
  np.testing.assert_array_equal(labels.label_map(names, labels.CLASS_ORDERS["affectnet7"]), range(7))


def test_images_in_no_class_folder_are_left_out_with_one_warning_that_counts_them(tmp_path, caplog):
  """A misnamed class folder (happiness/ beside happy/) was skipped with an INFO line among TFDS's own."""
  written = fx.write_fedro(tmp_path / "manual")
  crop = tmp_path / "manual" / "FED_RO_crop"
  for k in range(3):
    fx.write_image(crop / "happiness" / f"{k}.jpg", k)
  fx.write_image(crop / "loose.png", 0)
  fx.write_image(crop / "sad" / "more" / "deep.jpg", 0)
  (crop / "__MACOSX" / "sad").mkdir(parents=True)  # no images in these: nothing is left out
  (crop / "__MACOSX" / "sad" / "._sad_0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
  (crop / "empty").mkdir()
  with caplog.at_level(logging.INFO):
    builder = build("fedro", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "test")) == written["test"]
  [warning] = [r for r in caplog.records if "Leaving out" in r.getMessage()]
  assert warning.levelno == logging.WARNING
  assert warning.getMessage() == (
      f"Leaving out 5 images under {crop} that are not directly in one of its class folders (neural, neutral, "
      "happy, sad, surprise, fear, disgust, anger): 1 in ./, 3 in happiness/, 1 in sad/more/ (e.g. loose.png). Move "
      "each into its class's folder (names match case-insensitively) and prepare again with --overwrite.")


def test_sfew_aligned_faces_beside_the_original_frames_are_not_left_out_images(tmp_path, caplog):
  """Train/ may hold Train_Aligned_Faces/ beside the class folders of config original."""
  written = fx.write_sfew(tmp_path / "manual")
  for split in ("Train", "Val"):
    (tmp_path / "manual" / f"{split}_Aligned_Faces").rename(tmp_path / "manual" / split / f"{split}_Aligned_Faces")
  with caplog.at_level(logging.WARNING):
    builder = build("sfew/original", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "validation")) == written["original"]["validation"]
  assert "Leaving out" not in caplog.text


def test_class_folders_read_every_image_suffix_that_predict_reads(tmp_path):
  """.tif, .webp, .gif, .ppm and .pgm images in a class folder were left out silently. They are stored as PNG,
  as BMP was: the prepared set holds JPEG and PNG only."""
  written = fx.write_fedro(tmp_path / "manual")
  formats = {".tif": "TIFF", ".TIFF": "TIFF", ".webp": "WEBP", ".gif": "GIF", ".ppm": "PPM", ".pgm": "PPM"}
  for index, (suffix, fmt) in enumerate(formats.items()):
    name = f"FED_RO_crop/happy/extra_{index}{suffix}"
    fx.write_image(tmp_path / "manual" / name, index, mode="L" if suffix == ".pgm" else "RGB", fmt=fmt)
    written["test"][name] = 1
  builder = build("fedro", tmp_path / "manual", tmp_path / "tfds")
  examples = read(builder, "test")
  assert labels_of(examples) == written["test"]
  stored = builder.as_data_source("test", decoders={"image": tfds.decode.SkipDecoding()})
  stored = {example["file_name"].decode(): example["image"] for example in read_records(stored)}
  for name in written["test"]:
    if "extra_" in name:
      assert stored[name].startswith(b"\x89PNG")
      with Image.open(tmp_path / "manual" / name) as image:
        np.testing.assert_array_equal(examples[name]["image"], np.asarray(image.convert("RGB")))


# --------------------------------------------------------------------------------------------
# Errors on bad input


def test_missing_label_file_names_the_expected_paths(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  (tmp_path / "manual" / "basic" / "EmoLabel" / "list_patition_label.txt").unlink()
  with pytest.raises(builder_utils.DataError) as error:
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  message = str(error.value)
  assert os.fspath(tmp_path / "manual" / "basic" / "EmoLabel" / "list_patition_label.txt") in message
  assert "Image/aligned/train_00001_aligned.jpg" in message  # what the download looks like


def test_missing_class_folder_is_named(tmp_path):
  fx.write_sfew(tmp_path / "manual")
  for path in (tmp_path / "manual" / "Val_Aligned_Faces" / "Sad").iterdir():
    path.unlink()
  (tmp_path / "manual" / "Val_Aligned_Faces" / "Sad").rmdir()
  with pytest.raises(builder_utils.DataError, match=r"Val_Aligned_Faces lacks the class folders \['sad'\]"):
    build("sfew", tmp_path / "manual", tmp_path / "tfds")


def test_corrupt_image_raises_or_is_skipped_and_counted(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  broken = tmp_path / "manual" / "basic" / "Image" / "aligned" / "test_0003_aligned.jpg"
  fx.corrupt(broken)
  with pytest.raises(builder_utils.DataError, match=f"{broken}.*--skip_corrupt"):
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert not list((tmp_path / "tfds" / "rafdb" / "basic").glob("*"))  # nothing half-written is left
  builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds", skip_corrupt=True)
  assert builder.skipped_images == {"test": ["test_0003.jpg"]}
  assert builder.info.splits["test"].num_examples == len(fx.RAFDB_TEST) - 1


def test_empty_image_file_is_named_and_can_be_skipped(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  empty = tmp_path / "manual" / "basic" / "Image" / "aligned" / "test_0003_aligned.jpg"
  empty.write_bytes(b"")
  with pytest.raises(builder_utils.DataError, match=f"Cannot read image {empty} \\(the file is empty\\)"):
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds", skip_corrupt=True)
  assert builder.skipped_images == {"test": ["test_0003.jpg"]}


def test_missing_image_stops_even_with_skip_corrupt(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  missing = tmp_path / "manual" / "basic" / "Image" / "aligned" / "test_0003_aligned.jpg"
  missing.unlink()
  for skip_corrupt in (False, True):
    with pytest.raises(builder_utils.DataError) as error:
      build("rafdb", tmp_path / "manual", tmp_path / "tfds", skip_corrupt)
    assert str(error.value).startswith(f"Image {missing}, listed in {tmp_path / 'manual' / 'basic' / 'EmoLabel'}")
    assert "does not exist. Restore it from the owners' download (--skip_corrupt skips unreadable images, not " \
           "missing ones)." in str(error.value)


def test_missing_image_beside_one_named_in_another_case_says_to_rename_it(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  aligned = tmp_path / "manual" / "basic" / "Image" / "aligned"
  (aligned / "train_00001_aligned.jpg").rename(aligned / "train_00001_aligned.JPG")
  with pytest.raises(builder_utils.DataError) as error:
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"Image {aligned / 'train_00001_aligned.jpg'}, listed in "
                              f"{tmp_path / 'manual' / 'basic' / 'EmoLabel' / 'list_patition_label.txt'}, line 1, "
                              "does not exist; train_00001_aligned.JPG is there: rename it train_00001_aligned.jpg.")


def test_broken_link_to_an_image_is_named_with_its_target(tmp_path):
  fx.write_fedro(tmp_path / "manual")
  link = tmp_path / "manual" / "FED_RO_crop" / "happy" / "happy_2.jpg"
  link.symlink_to(tmp_path / "elsewhere" / "happy_2.jpg")
  with pytest.raises(builder_utils.DataError) as error:
    build("fedro", tmp_path / "manual", tmp_path / "tfds", skip_corrupt=True)
  assert str(error.value) == (f"Image {link}, listed in {tmp_path / 'manual' / 'FED_RO_crop'}, is a broken link to "
                              f"{tmp_path / 'elsewhere' / 'happy_2.jpg'}: restore the file it points to, or replace "
                              "the link with the image.")


def test_class_folder_image_whose_name_is_not_utf8_is_kept_with_the_bytes_escaped(tmp_path):
  """A Latin-1 "é" from a Windows archive: TFDS could not store the name (UnicodeEncodeError, surrogates)."""
  written = fx.write_fedro(tmp_path / "manual")
  happy = tmp_path / "manual" / "FED_RO_crop" / "happy"
  fx.write_image(happy / os.fsdecode(b"caf\xe9.jpg"), 3)
  builder = build("fedro", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "test")) == {**written["test"], "FED_RO_crop/happy/caf\\xe9.jpg": 1}


@pytest.mark.parametrize("dataset,write,extracted,archive", [
    ("rafdb", fx.write_rafdb, "basic/Image/aligned", "basic/Image/aligned.zip"),
    ("sfew", fx.write_sfew, "Train_Aligned_Faces", "Train/Train_Aligned_Faces.zip"),
    ("fedro", fx.write_fedro, "FED_RO_crop", "FED_RO/FED_RO_crop.zip"),
])
def test_an_archive_not_extracted_in_a_sub_folder_is_named(tmp_path, dataset, write, extracted, archive):
  write(tmp_path / "manual")
  shutil.rmtree(tmp_path / "manual" / extracted)
  (tmp_path / "manual" / archive).parent.mkdir(exist_ok=True)
  (tmp_path / "manual" / archive).write_bytes(b"PK")
  with pytest.raises(builder_utils.DataError) as error:
    build(dataset, tmp_path / "manual", tmp_path / "tfds")
  folder, name = os.path.split(tmp_path / "manual" / archive)
  assert f"{folder} holds {name}: extract it there first.\n" in str(error.value)


def test_manual_dir_that_is_an_archive_says_to_extract_it(tmp_path):
  (tmp_path / "basic.zip").write_bytes(b"PK")
  with pytest.raises(builder_utils.DataError) as error:
    prepare.prepare("rafdb", os.fspath(tmp_path / "basic.zip"), os.fspath(tmp_path / "tfds"))
  assert str(error.value).startswith(f"--manual_dir {tmp_path / 'basic.zip'} is an archive: extract it, and pass the "
                                     "folder it gives as --manual_dir.\nRequest RAF-DB at")


def test_rafdb_label_line_of_neither_split_says_the_fix(tmp_path):
  label_file = _rafdb_label_file(tmp_path / "manual", ["val_0001.jpg 5"])
  with pytest.raises(builder_utils.DataError) as error:
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"{label_file}, line 1: 'val_0001.jpg' starts with neither train_ nor test_, as every "
                              'image of the official label files does ("train_00001.jpg 5", "test_0001.jpg 4"). '
                              "Correct the line or restore the file from the owners' download.")


@pytest.mark.parametrize("dataset,write,text_file,line", [
    ("fer2013", fx.write_fer2013, "fer2013.csv", 4),
    # Such a row was left out unseen where the PNGs are there (nothing compares it with fer2013.csv).
    ("ferplus", functools.partial(fx.write_ferplus, label_csv=False), "fer2013new.csv", 9),
])
def test_usage_not_spelt_as_the_official_file_does_says_the_fix(tmp_path, dataset, write, text_file, line):
  write(tmp_path / "manual")
  path = tmp_path / "manual" / text_file
  lines = path.read_text().splitlines()
  lines[line - 1] = lines[line - 1].replace("PublicTest", "publictest")
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(builder_utils.DataError) as error:
    build(dataset, tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"{path}, line {line}: Usage 'publictest' is not one of Training, PublicTest, "
                              "PrivateTest, the only values (spelt so) of the official file. Correct the line or "
                              "restore the file from the owners' download.")


def _with_byte_order_mark_and_crlf(path) -> None:
  path.write_bytes("\ufeff".encode() + path.read_bytes().replace(b"\n", b"\r\n"))


@pytest.mark.parametrize("dataset,write,text_files", [
    ("fer2013", fx.write_fer2013, ["fer2013.csv"]),
    ("ferplus", fx.write_ferplus, ["data/FER2013Train/label.csv", "data/FER2013Valid/label.csv"]),
    ("ferplus", functools.partial(fx.write_ferplus, label_csv=False, pngs=False), ["fer2013new.csv"]),
    ("affectnet", fx.write_affectnet_original, ["Manually_Annotated_file_lists/training.csv",
                                                "Manually_Annotated_file_lists/validation.csv"]),
    ("rafdb", fx.write_rafdb, ["basic/EmoLabel/list_patition_label.txt"]),
])
def test_text_files_with_a_byte_order_mark_and_crlf_read_as_without(tmp_path, dataset, write, text_files):
  write(tmp_path / "plain")
  write(tmp_path / "marked")
  for name in text_files:
    _with_byte_order_mark_and_crlf(tmp_path / "marked" / name)
  plain = build(dataset, tmp_path / "plain", tmp_path / "tfds_plain")
  marked = build(dataset, tmp_path / "marked", tmp_path / "tfds_marked")
  for split in plain.info.splits:
    assert labels_of(read(marked, split)) == labels_of(read(plain, split))


@pytest.mark.parametrize("dataset,write,text_file", [
    ("fer2013", fx.write_fer2013, "fer2013.csv"),
    ("ferplus", fx.write_ferplus, "data/FER2013Valid/label.csv"),
    ("ferplus", functools.partial(fx.write_ferplus, label_csv=False, pngs=False), "fer2013new.csv"),
    ("affectnet", fx.write_affectnet_original, "Manually_Annotated_file_lists/validation.csv"),
    ("rafdb", fx.write_rafdb, "basic/EmoLabel/list_patition_label.txt"),
])
def test_text_file_saved_as_utf16_is_named_with_the_fix(tmp_path, dataset, write, text_file):
  """As Excel or a Windows tool saves it: a raw UnicodeDecodeError before."""
  write(tmp_path / "manual")
  path = tmp_path / "manual" / text_file
  path.write_bytes(path.read_text().encode("utf-16"))
  with pytest.raises(builder_utils.DataError) as error:
    build(dataset, tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"{path} is not UTF-8 text (it holds the byte 0xff: saved as UTF-16 by Excel or a "
                              "Windows tool?). Save it as UTF-8 (Excel: \"CSV UTF-8\") or restore it from the owners' "
                              "download.")


def _open_a_quote(path, line: int) -> None:
  lines = path.read_text().splitlines()
  lines[line - 1] = '"' + lines[line - 1]
  path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dataset,write,text_file,trouble", [
    ("fer2013", fx.write_fer2013, "fer2013.csv", "runs on to line 11"),
    # Over the csv module's field limit (131,072 characters) before the end of the file.
    ("fer2013", functools.partial(fx.write_fer2013, rows=fx.FER2013_ROWS * 6), "fer2013.csv",
     "cannot be read (field larger than field limit (131072))"),
    ("ferplus", functools.partial(fx.write_ferplus, box=False), "data/FER2013Train/label.csv", "runs on to line 6"),
    ("ferplus", functools.partial(fx.write_ferplus, label_csv=False, pngs=False), "fer2013new.csv",
     "runs on to line 13"),
    ("affectnet", fx.write_affectnet_original, "Manually_Annotated_file_lists/training.csv", "runs on to line 13"),
])
def test_csv_quote_left_open_is_named_at_its_line(tmp_path, dataset, write, text_file, trouble):
  """The row was blamed on the file's last line ("got 2 columns"), or on no line at all above the field limit."""
  write(tmp_path / "manual")
  path = tmp_path / "manual" / text_file
  _open_a_quote(path, 3)
  with pytest.raises(builder_utils.DataError) as error:
    build(dataset, tmp_path / "manual", tmp_path / "tfds")
  assert str(error.value) == (f"{path}, line 3: the row starting here {trouble}, as when a quote (\") opened in it is "
                              "never closed. Close or remove the quote, or restore the file from the owners' download.")


SIXTEEN_BIT = np.array([[0x0000, 0x00ff, 0x0100], [0x8040, 0xff00, 0xffff]], np.uint16)


@pytest.mark.parametrize("make", [
    lambda: Image.fromarray(SIXTEEN_BIT),  # as PIL opens 16-bit grey PNGs
    lambda: Image.frombytes("I;16B", (3, 2), SIXTEEN_BIT.astype(">u2").tobytes()),
    lambda: Image.fromarray(SIXTEEN_BIT.astype(np.int32)),  # as older PIL versions open them
], ids=["I;16", "I;16B", "I"])
def test_sixteen_bit_grey_keeps_its_top_eight_bits_when_stored_and_at_prediction(make):
  image = make()
  expected = (SIXTEEN_BIT >> 8).astype(np.uint8)
  for channels in (1, 3):
    np.testing.assert_array_equal(decode.to_stored(image, (2, 3, channels)), np.repeat(expected[..., None], channels, -1))
  buffer = io.BytesIO()
  image.save(buffer, format="TIFF")
  for channels, mode in ((1, "L"), (3, "RGB")):
    with Image.open(io.BytesIO(builder_utils.encode_image(buffer.getvalue(), channels))) as stored:
      assert stored.mode == mode
      np.testing.assert_array_equal(np.asarray(stored.convert("L")), expected)


def test_label_out_of_range_names_file_and_line(tmp_path):
  fx.write_rafdb(tmp_path / "manual")
  label_file = tmp_path / "manual" / "basic" / "EmoLabel" / "list_patition_label.txt"
  lines = label_file.read_text().splitlines()
  lines[2] = "train_00003.jpg 8"
  label_file.write_text("\n".join(lines) + "\n")
  with pytest.raises(builder_utils.DataError, match=r"list_patition_label\.txt, line 3: label '8' is not"):
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")


def _write_rafdb_subsets(root):
  fx.write_rafdb(root, subsets=True)
  return root / "basic" / "EmoLabel" / "val_raf_db_list_45.txt"


def _write_ferplus_subsets(root):
  fx.write_ferplus(root, subsets=True)
  return root / "data" / "FER2013Test" / "pose_30_ferplus_list.txt"


def _write_affectnet_subsets(root):
  fx.write_affectnet_original(root, subsets=True)
  return root / "Manually_Annotated_file_lists" / "occlusion_affectnet_list.txt"


@pytest.mark.parametrize("dataset,write,entry,what", [
    ("rafdb", _write_rafdb_subsets, "0/test_0099_aligned.jpg", "the RAF-DB test split"),
    ("ferplus", _write_ferplus_subsets, "3/fer0000007.jpg", "FERPlus's test split"),  # a validation image
    ("affectnet", _write_affectnet_subsets, "val/0/" + "f" * 56 + "/", "the validation split"),
])
def test_subset_list_naming_an_image_the_split_lacks_is_named(tmp_path, dataset, write, entry, what):
  listed = write(tmp_path / "manual")
  lines = listed.read_text().splitlines()
  listed.write_text("\n".join([lines[0], entry, *lines[1:]]) + "\n")
  with pytest.raises(builder_utils.DataError) as error:
    prepare.prepare(dataset, os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  assert str(error.value).startswith(f"{listed}, line 2: {entry!r} names an image that {what}")
  assert str(error.value).endswith("from github.com/kaiwang960112/Challenge-condition-FER-dataset, or delete the line.")


def test_subset_entries_of_each_list_format(tmp_path):
  # First lines of Wang et al.'s files (RAF_DB_dir/, FERplus_dir/, AffectNet_dir/).
  assert rafdb.parse_subset_entry("test_0003_aligned 3 4") == ("test_0003", "3")
  assert rafdb.parse_subset_entry("0/test_0004_aligned.jpg") == ("test_0004", "0")
  assert ferplus.parse_subset_entry("1_fer0034656.png 8 0") == ("fer0034656.png", "1")
  assert ferplus.parse_subset_entry("0/fer0032226.jpg") == ("fer0032226.png", "0")
  stem = "bc9ad400db82eca1882b11c9603348fb3e92f5b0d67391ac22a1bc79"
  for entry in (f"val/0/{stem}/", f"0/{stem}.jpg", f"0/{stem}/8.jpg"):
    assert affectnet.parse_subset_entry(entry) == (stem, "0")
  for parse, entry in ((ferplus.parse_subset_entry, "fer0032226.jpg"), (affectnet.parse_subset_entry, stem)):
    with pytest.raises(ValueError):
      parse(entry)
  listed = tmp_path / "pose_30_ferplus_list.txt"
  listed.write_text("0/fer0032226.jpg\n3-fer0032227.jpg\n")
  with pytest.raises(builder_utils.DataError, match=f"{listed}, line 2: '3-fer0032227.jpg' is not an entry of a subset"):
    builder_utils.listed_keys(listed, ferplus.parse_subset_entry, {"fer0032226.png": 0}, {"fer0032226.png"}, range(8),
                              "FERPlus's test split")


def test_affectnet_subset_lists_need_the_original_release(tmp_path):
  fx.write_affectnet_later(tmp_path / "manual")
  fx.write_affectnet_subset_lists(tmp_path / "manual", [f"val_set/images/{i}.jpg" for i in range(8)])
  with pytest.raises(builder_utils.DataError, match="pose_30_affectnet_list.txt selects images of the original release"):
    build("affectnet", tmp_path / "manual", tmp_path / "tfds")


# --------------------------------------------------------------------------------------------
# prepare


def test_prepare_rejects_unknown_names_listing_valid_ones():
  with pytest.raises(builder_utils.DataError, match="choose one of fer2013, ferplus, rafdb"):
    prepare.make_builder("raf")
  with pytest.raises(builder_utils.DataError, match="rafdb/basic, rafdb/aligned224"):
    prepare.make_builder("rafdb/aligned112")


@pytest.mark.integration
def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
  fx.write_rafdb(tmp_path / "manual")

  def interrupted(self, split, records):
    yield from builder_utils.ManualBuilder._generate_examples(self, split, list(records)[:2])
    raise KeyboardInterrupt

  monkeypatch.setattr(rafdb.Rafdb, "_generate_examples", interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare("rafdb", tmp_path / "manual", os.fspath(tmp_path / "tfds"))
  assert not prepare.make_builder("rafdb", os.fspath(tmp_path / "tfds")).is_prepared()
  # A run killed outright leaves its temporary folder; the next run removes it and builds.
  stale = tmp_path / "tfds" / "rafdb" / "basic" / "incomplete.ABC123_1.0.0"
  stale.mkdir(parents=True)
  (stale / "rafdb-train.array_record-00000-of-00001").write_bytes(b"partial")
  monkeypatch.undo()
  builder = prepare.prepare("rafdb", tmp_path / "manual", os.fspath(tmp_path / "tfds"))
  assert builder.is_prepared() and not stale.exists()
  assert builder.info.splits["train"].num_examples == len(fx.RAFDB_TRAIN)


@pytest.mark.integration
def test_a_second_prepare_of_a_set_waits_for_the_first_and_deletes_nothing_it_writes(tmp_path, caplog):
  """Two jobs running `prepare && train` on one data dir: the second deleted the first's folder under way as a
  killed run's leftover, and the first failed ("open() failed: No such file or directory")."""
  fx.write_rafdb(tmp_path / "manual")
  builder = prepare.make_builder("rafdb", os.fspath(tmp_path / "tfds"))
  under_way = tmp_path / "tfds" / "rafdb" / "basic" / "incomplete.ABC123_1.0.0"
  second = threading.Thread(target=prepare.prepare, args=("rafdb", tmp_path / "manual", os.fspath(tmp_path / "tfds")))
  with caplog.at_level(logging.WARNING), prepare.preparing_alone(builder):
    under_way.mkdir(parents=True)
    second.start()
    second.join(timeout=3)
    assert second.is_alive() and under_way.exists()
  second.join(timeout=120)
  assert "Waiting for another run preparing rafdb/basic/1.0.0" in caplog.text
  assert builder.is_prepared() and not under_way.exists()


def test_a_set_prepared_in_a_read_only_place_is_found_prepared_without_its_lock(tmp_path, monkeypatch):
  """A set an administrator prepared in a read-only folder: `prepare && train` must find it, not fail at the lock."""
  fx.write_fedro(tmp_path / "manual")
  prepare.prepare("fedro", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))

  def read_only(path, *args, **kwargs):
    if os.fspath(path).endswith(prepare.LOCK_FILE):
      raise PermissionError(13, "Permission denied", os.fspath(path))
    return open(path, *args, **kwargs)

  monkeypatch.setattr(prepare, "open", read_only, raising=False)
  assert prepare.prepare("fedro", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds")).is_prepared()


def test_a_prepared_sets_run_deletes_a_killed_rebuilds_leftover(tmp_path):
  """A killed --overwrite left its staging copy (a whole set) through every later run finding the set prepared."""
  fx.write_fedro(tmp_path / "manual")
  prepare.prepare("fedro", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  staging = tmp_path / "tfds" / "fedro" / "incomplete.overwrite4242_1.0.0"
  staging.mkdir()
  prepared = {path: path.stat().st_mtime_ns for path in (tmp_path / "tfds" / "fedro").rglob("*") if path.is_file()}
  assert prepare.prepare("fedro", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds")).is_prepared()
  assert not staging.exists()
  assert prepared and {path: path.stat().st_mtime_ns for path in prepared} == prepared  # the set itself untouched


def test_a_full_disk_while_writing_records_names_the_data_dir(tmp_path, monkeypatch):
  """ArrayRecord's writer raises a RuntimeError: it ended in a traceback, exit 1."""
  fx.write_fedro(tmp_path / "manual")

  def full_disk(builder, manual):
    raise RuntimeError('Failed to finalize writing of split "train": write() failed: No space left on device; '
                       f"writing {builder.data_dir}/fedro-train.array_record-00000-of-00001")

  monkeypatch.setattr(prepare, "build", full_disk)
  with pytest.raises(builder_utils.DataError) as error:
    prepare.prepare("fedro", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  assert str(error.value) == (f"--data_dir {tmp_path / 'tfds'} ran out of space (No space left on device) while "
                              "writing fedro/1.0.0: free space or pass another --data_dir, then run the same command "
                              "again (a copy prepared before stays as it was).")


def test_a_first_prepare_gives_no_tfds_warning_of_a_missing_dataset_info(tmp_path, caplog):
  fx.write_fedro(tmp_path / "manual")
  with caplog.at_level(logging.WARNING):
    builder = prepare.prepare("fedro", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  assert builder.is_prepared()
  assert "has no dataset_info.json" not in caplog.text


def test_a_set_folder_holding_no_prepared_set_is_named_not_taken_as_prepared(tmp_path):
  """TFDS reused such a folder: the run built nothing and printed an empty summary, exit 0."""
  fx.write_fedro(tmp_path / "manual")
  folder = tmp_path / "tfds" / "fedro" / "1.0.0"
  folder.mkdir(parents=True)
  with pytest.raises(builder_utils.DataError) as error:
    prepare.prepare("fedro", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  assert str(error.value) == (f"{folder} exists but holds no prepared set (no dataset_info.json): move it away or "
                              "delete it, then run the same command again.")


def test_building_a_set_prints_nothing_to_stdout_and_logs_what_it_builds(tmp_path, capsys, caplog):
  """TFDS prints "Downloading and preparing dataset Unknown size …" to stdout, though nothing is downloaded."""
  fx.write_rafdb(tmp_path / "manual")
  with caplog.at_level(logging.INFO):
    builder = prepare.prepare("rafdb", os.fspath(tmp_path / "manual"), os.fspath(tmp_path / "tfds"))
  assert capsys.readouterr().out == ""
  assert f"Building rafdb/basic/1.0.0 in {builder.data_dir}…" in caplog.text
  assert f"Built rafdb/basic/1.0.0 in {builder.data_dir}." in caplog.text


def test_prepare_from_python_expands_the_home_folder_of_both_paths(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  fx.write_rafdb(tmp_path / "manual")
  builder = prepare.prepare("rafdb", "~/manual", "~/tfds")
  assert builder.is_prepared() and os.fspath(builder.data_dir_root) == os.fspath(tmp_path / "tfds")
  assert not (tmp_path / "~").exists()


@pytest.mark.integration
def test_prepare_command_is_idempotent_and_fails_on_bad_input(tmp_path):
  fx.write_fedro(tmp_path / "manual")
  command = [sys.executable, "-m", "fer_jax.data.prepare", "--dataset=fedro",
             f"--data_dir={tmp_path / 'tfds'}"]
  run = functools.partial(subprocess.run, capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parents[1])
  first = run([*command, f"--manual_dir={tmp_path / 'manual'}"])
  assert first.returncode == 0, first.stderr
  assert "test: 14 examples" in first.stdout
  # Already complete: nothing is read, and the warning says how to rebuild.
  (tmp_path / "manual" / "FED_RO_crop" / "anger" / "anger_0.jpg").unlink()
  again = run([*command, f"--manual_dir={tmp_path / 'manual'}"])
  assert again.returncode == 0 and "test: 14 examples" in again.stdout
  assert (f"fedro/1.0.0 is already prepared in {tmp_path / 'tfds' / 'fedro' / '1.0.0'}, so nothing was read from "
          f"{tmp_path / 'manual'}. To rebuild it from there, run the same command with --overwrite.") in again.stderr
  # A --manual_dir that does not exist stops it, even when the set is prepared.
  for data_dir in (tmp_path / "tfds", tmp_path / "other"):
    bad = run([*command[:-1], f"--data_dir={data_dir}", f"--manual_dir={tmp_path / 'gone'}"])
    assert bad.returncode == 2
    assert f"--manual_dir {tmp_path / 'gone'} is not a folder" in bad.stderr
    assert "github.com/mysee1989/PG-CNN" in bad.stderr


@pytest.mark.parametrize("pixels, expected", [("", "got 0"), ("1 2 3", "got 3"),
                                              (" ".join(["300"] * 2304), "got values in [300, 300]")])
def test_fer2013_pixels_that_are_no_48_by_48_image_say_why(pixels, expected):
  """An empty pixels cell gave numpy's "zero-size array to reduction operation" instead."""
  with pytest.raises(ValueError, match=re.escape(expected)):
    fer2013.pixels_to_png(pixels)


def test_affectnet_images_unpacked_from_manually_annotated_compressed(tmp_path):
  """The original release's image archive, Manually_Annotated_compressed.zip, unpacks to this folder."""
  written = fx.write_affectnet_original(tmp_path / "manual")
  (tmp_path / "manual" / "Manually_Annotated_compressed").mkdir()
  (tmp_path / "manual" / "Manually_Annotated_Images").rename(
      tmp_path / "manual" / "Manually_Annotated_compressed" / "Manually_Annotated_Images")
  builder = build("affectnet", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "validation")) == {name: row[0] for name, row in written["rows"]["validation"].items()}


def test_sfew_validation_faces_unpacked_from_val_aligned_faces_new(tmp_path):
  """The organisers ship the aligned validation faces as Val_Aligned_Faces_new.zip."""
  written = fx.write_sfew(tmp_path / "manual")
  (tmp_path / "manual" / "Val_Aligned_Faces").rename(tmp_path / "manual" / "Val_Aligned_Faces_new")
  builder = build("sfew", tmp_path / "manual", tmp_path / "tfds")
  assert labels_of(read(builder, "validation")) == {
      name.replace("Val_Aligned_Faces/", "Val_Aligned_Faces_new/"): label
      for name, label in written["aligned"]["validation"].items()}


@pytest.mark.parametrize("kept, empty_split", [("train_", "test"), ("no line", "train")])
def test_rafdb_label_file_without_a_split_s_lines_is_named_before_the_subset_lists(tmp_path, kept, empty_split):
  """A label file cut short (only its train lines, or none) while Wang et al.'s lists are present: the occlusion list's
  first line was blamed, as naming an image the test split lacks, and the label file was not named."""
  fx.write_rafdb(tmp_path / "manual", subsets=True)
  label_file = tmp_path / "manual" / "basic" / "EmoLabel" / "list_patition_label.txt"
  lines = label_file.read_text().splitlines()
  label_file.write_text("".join(f"{line}\n" for line in lines if line.startswith(kept)))
  with pytest.raises(builder_utils.DataError, match=f"gives no examples for the '{empty_split}' split") as error:
    build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  assert str(label_file) in str(error.value) and "names an image" not in str(error.value)


def test_a_label_index_that_cannot_be_written_leaves_no_partial_file(tmp_path, monkeypatch):
  """A full disk while the label index was written left its `.incomplete-PID` file in the prepared set's folder."""
  fx.write_rafdb(tmp_path / "manual")
  builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  for split in builder.info.splits:  # a set prepared before the index existed
    builder_utils.label_index_path(builder, split).unlink(missing_ok=True)
  before = sorted(os.listdir(builder.data_path))

  def full_disk(file, array, **kwargs):
    file.write(b"\x93NUMPY")
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(np, "save", full_disk)
  with pytest.raises(OSError) as error:
    builder_utils.write_label_index(builder)
  assert error.value.errno == errno.ENOSPC and str(builder.data_path) in error.value.filename
  assert sorted(os.listdir(builder.data_path)) == before


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_prepared_set_with_a_damaged_or_missing_record_file_names_it_and_the_prepare_command(tmp_path, damage):
  """A data folder copied incompletely (a cluster node): array_record's "Invalid Riegeli/records file" or "open()
  failed" traceback instead. A set with a label index reads its records only at its first batch: checked as it opens."""
  fx.write_rafdb(tmp_path / "manual")
  builder = build("rafdb", tmp_path / "manual", tmp_path / "tfds")
  builder_utils.write_label_index(builder)
  shard = builder.data_path / "rafdb-test.array_record-00000-of-00001"
  shard.unlink() if damage == "deleted" else os.truncate(shard, os.path.getsize(shard) // 2)
  config = ml_collections.ConfigDict({"dataset": {"name": "rafdb", "data_dir": str(tmp_path / "tfds"),
                                                  "class_order": "rafdb"}})
  with pytest.raises(builder_utils.DataError) as error:
    pipeline.load_split(config, "test", evaluation=True)
  message = str(error.value)
  assert f"{shard} {'is missing' if damage == 'deleted' else 'cannot be read'}" in message
  assert (f"python -m fer_jax.data.prepare --dataset=rafdb/basic --manual_dir=PATH_TO_DOWNLOAD "
          f"--data_dir={tmp_path / 'tfds'} --overwrite") in message
  with pytest.raises(builder_utils.DataError, match=re.escape(str(shard))):  # what preparing it again first reads
    builder_utils.read_label_columns(builder, "test")


def test_class_folders_match_whatever_the_case_of_their_names_in_the_mapping(tmp_path):
  """A set of yours mapping {"Happy": 0} found no Happy/ folder: only the folder's name was lower-cased."""
  for folder in ("Happy", "SAD"):
    (tmp_path / "train" / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / folder / "a.png")
  records = builder_utils.class_folder_records(builder_utils.epath.Path(tmp_path / "train"), {"Happy": 0, "sad": 1},
                                               builder_utils.epath.Path(tmp_path), "LAYOUT")
  assert sorted((record.file_name, record.label) for record in records) == [("train/Happy/a.png", 0),
                                                                            ("train/SAD/a.png", 1)]


def test_a_damaged_set_of_yours_read_by_its_name_alone_gets_the_generic_fix():
  """Its builder not imported (docs/extending.md: a prepared set is read by its name), the message's fix looked the
  builder up and ended in TFDS's DatasetNotFoundError traceback."""
  info = types.SimpleNamespace(name="a_set_of_yours_not_imported", data_dir="/data/tfds/a_set/1.0.0", config_name="")
  fix = builder_utils._prepare_again(info)  # pylint: disable=protected-access
  assert fix == "Prepare it again, or copy it again from a complete copy."
