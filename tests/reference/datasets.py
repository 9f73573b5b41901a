"""Tiny copies of the FER data sets as their owners ship them, for the builder tests.

Every `write_*` function writes real file names and label files in the owners' formats under
`root` and returns what a correct builder must read back: {split: {file_name: label}} (labels
in the data set's own order, 0-based), plus per-image facts the tests check.
"""

import numpy as np
from PIL import Image


def colour(index: int) -> tuple[int, int, int]:
  """A distinct, JPEG-robust colour per image index."""
  return (40 + 50 * (index % 4), 40 + 40 * (index // 4 % 5), 200 - 30 * (index % 6))


def write_image(path, index: int, size=(12, 10), mode="RGB", fmt=None) -> tuple[int, int, int]:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.new("RGB", size, colour(index))
  image.convert(mode).save(path, format=fmt)
  return colour(index)


def fer_pixels(index: int) -> np.ndarray:
  return np.random.default_rng(index).integers(0, 256, (48, 48), dtype=np.uint8)


def _pixel_text(pixels: np.ndarray) -> str:
  return " ".join(str(v) for v in pixels.ravel())


# ---------------------------------------------------------------------------------------------
# FER2013: (emotion, Usage) per row.
FER2013_ROWS = [(0, "Training"), (3, "Training"), (6, "PublicTest"), (2, "Training"), (5, "PrivateTest"),
                (1, "Training"), (4, "PublicTest"), (3, "PrivateTest"), (6, "Training"), (0, "PrivateTest")]
FER2013_SPLITS = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}


def write_fer2013(root, variant: str = "kaggle", rows=FER2013_ROWS) -> dict:
  """`fer2013.csv` (emotion,pixels,Usage) or `icml_face_data.csv` ("emotion, Usage, pixels").

  Returns {split: {file_name: (label, pixels)}}.
  """
  root.mkdir(parents=True, exist_ok=True)
  name = "fer2013.csv" if variant == "kaggle" else "icml_face_data.csv"
  lines = ["emotion,pixels,Usage" if variant == "kaggle" else "emotion, Usage, pixels"]
  expected = {split: {} for split in FER2013_SPLITS.values()}
  for index, (label, usage) in enumerate(rows):
    pixels = fer_pixels(index)
    text = _pixel_text(pixels)
    lines.append(f"{label},{text},{usage}" if variant == "kaggle" else f"{label},{usage},{text}")
    expected[FER2013_SPLITS[usage]][f"{name}:{index + 2}"] = (label, pixels)
  (root / name).write_text("\n".join(lines) + "\n")
  return expected


# ---------------------------------------------------------------------------------------------
# FERPlus: one row per fer2013.csv row: (Usage, image name or "" for a non-face, votes).
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", (6, 0, 1, 1, 0, 0, 0, 0, 2, 0)),
    ("Training", "fer0000001.png", (4, 0, 0, 1, 3, 2, 0, 0, 0, 0)),
    ("Training", "", (0, 0, 0, 0, 0, 0, 0, 0, 0, 10)),
    ("Training", "fer0000002.png", (1, 0, 0, 0, 0, 0, 0, 0, 8, 1)),
    ("Training", "fer0000003.png", (3, 3, 0, 0, 0, 0, 0, 0, 2, 2)),
    ("Training", "fer0000004.png", (0, 0, 0, 0, 0, 0, 0, 9, 1, 0)),
    ("Training", "fer0000005.png", (0, 1, 8, 1, 0, 0, 0, 0, 0, 0)),
    ("PublicTest", "fer0000006.png", (0, 0, 0, 10, 0, 0, 0, 0, 0, 0)),
    ("PublicTest", "fer0000007.png", (0, 0, 0, 0, 7, 3, 0, 0, 0, 0)),
    ("PrivateTest", "fer0000008.png", (0, 0, 0, 0, 0, 0, 6, 0, 4, 0)),
    ("PrivateTest", "", (0, 0, 0, 0, 0, 0, 0, 0, 1, 9)),
    ("PrivateTest", "fer0000009.png", (2, 2, 2, 2, 2, 0, 0, 0, 0, 0)),
]
# label.csv disagrees with fer2013new.csv on one image, as the real files do on about 4%.
FERPLUS_LABEL_CSV_VOTES = {"fer0000007.png": (0, 0, 0, 0, 3, 7, 0, 0, 0, 0)}
FERPLUS_FOLDERS = {"Training": ("train", "FER2013Train"), "PublicTest": ("validation", "FER2013Valid"),
                   "PrivateTest": ("test", "FER2013Test")}
# Labels per config from the votes of label.csv (None = dropped), by image name.
FERPLUS_LABELS = {
    "majority": {"fer0000000.png": 0, "fer0000004.png": 7, "fer0000005.png": 2, "fer0000006.png": 3,
                 "fer0000007.png": 5, "fer0000008.png": 6},
    "plurality": {"fer0000000.png": 0, "fer0000001.png": 0, "fer0000003.png": 0, "fer0000004.png": 7,
                  "fer0000005.png": 2, "fer0000006.png": 3, "fer0000007.png": 5, "fer0000008.png": 6,
                  "fer0000009.png": 0},
    "distribution": {"fer0000000.png": 0, "fer0000001.png": 0, "fer0000003.png": 0, "fer0000004.png": 7,
                     "fer0000005.png": 2, "fer0000006.png": 3, "fer0000007.png": 5, "fer0000008.png": 6},
}


# Wang et al.'s FERPlus lists in their formats; fer0000009 has no majority label. The pose > 30
# list says surprise (2) for fer0000008, whose votes say fear (6).
FERPLUS_SUBSET_LISTS = {
    "jianfei_occlusion_list.txt": b"6_fer0000008.png 8 2\r\n0_fer0000009.png 8 1\r\n",
    "FER2013Test/pose_30_ferplus_list.txt": b"2/fer0000008.jpg\n",
    "FER2013Test/pose_45_ferplus_list.txt": b"0/fer0000009.jpg\n6/fer0000008.jpg\n6/fer0000008.jpg\n",
}
FERPLUS_SUBSETS = {"majority": {"test_occlusion": {"fer0000008.png": 6}, "test_pose30": {"fer0000008.png": 6},
                                "test_pose45": {"fer0000008.png": 6}},
                   "plurality": {"test_occlusion": {"fer0000008.png": 6, "fer0000009.png": 0},
                                 "test_pose30": {"fer0000008.png": 6},
                                 "test_pose45": {"fer0000009.png": 0, "fer0000008.png": 6}}}


def write_ferplus(root, *, box: bool = True, pngs: bool = True, label_csv: bool = True,
                  under_data: bool = True, subsets: bool = False) -> dict:
  """A FERPlus clone (+ fer2013.csv) after or before generate_training_data.py (+ Wang et al.'s
  lists: the occlusion one in the clone's root, the pose ones in FER2013Test/).

  Returns {"pixels": {name: pixels}, "votes": {name: votes the builder should read},
  "split": {name: split}}.
  """
  root.mkdir(parents=True, exist_ok=True)
  fer_lines = ["emotion,pixels,Usage"]
  new_lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
  label_lines = {usage: [] for usage in FERPLUS_FOLDERS}
  out = {"pixels": {}, "votes": {}, "split": {}}
  base = root / "data" if under_data else root
  for index, (usage, name, votes) in enumerate(FERPLUS_ROWS):
    pixels = fer_pixels(100 + index)
    fer_lines.append(f"0,{_pixel_text(pixels)},{usage}")
    new_lines.append(",".join([usage, name, *map(str, votes)]))
    if not name:
      continue
    split, folder = FERPLUS_FOLDERS[usage]
    folder_votes = FERPLUS_LABEL_CSV_VOTES.get(name, votes) if label_csv else votes
    box_column = ['"(0, 0, 48, 48)"'] if box else []
    label_lines[usage].append(",".join([name, *box_column, *map(str, folder_votes)]))
    out["pixels"][name], out["votes"][name], out["split"][name] = pixels, folder_votes, split
    if pngs:
      (base / folder).mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixels).save(base / folder / name, compress_level=0)
  (root / "fer2013.csv").write_text("\n".join(fer_lines) + "\n")
  (root / "fer2013new.csv").write_text("\n".join(new_lines) + "\n")
  if label_csv:
    for usage, (_, folder) in FERPLUS_FOLDERS.items():
      (base / folder).mkdir(parents=True, exist_ok=True)
      (base / folder / "label.csv").write_text("\n".join(label_lines[usage]) + "\n")
  if subsets:
    for name, text in FERPLUS_SUBSET_LISTS.items():
      path = (base if "/" in name else root) / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(text)
  return out


# ---------------------------------------------------------------------------------------------
# RAF-DB basic: 8 train and 6 test images, labels 1-7 as in list_patition_label.txt.
RAFDB_TRAIN = [5, 4, 7, 1, 2, 3, 6, 4]
RAFDB_TEST = [4, 1, 6, 7, 5, 3]


def write_rafdb(root, *, aligned224: bool = False, subsets: bool = False) -> dict:
  """`basic/` with EmoLabel/ and Image/aligned/ (+ APViT's aligned_224, + Wang et al.'s lists).

  Returns {"labels": {split: {file_name: 0-based label}}, "colour": {file_name: rgb}}.
  """
  basic = root / "basic"
  names = [(f"train_{i + 1:05d}", label) for i, label in enumerate(RAFDB_TRAIN)]
  names += [(f"test_{i + 1:04d}", label) for i, label in enumerate(RAFDB_TEST)]
  out = {"labels": {"train": {}, "test": {}}, "colour": {}}
  lines = []
  for index, (stem, label) in enumerate(names):
    lines.append(f"{stem}.jpg {label}")
    out["labels"][stem.split("_")[0]][f"{stem}.jpg"] = label - 1
    out["colour"][f"{stem}.jpg"] = write_image(basic / "Image" / "aligned" / f"{stem}_aligned.jpg", index)
    if aligned224:
      write_image(basic / "Image" / "aligned_224" / f"{stem}.jpg", index, size=(16, 16))
  (basic / "EmoLabel").mkdir(parents=True)
  (basic / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
  if aligned224:
    for split in ("train", "test"):
      (basic / "EmoLabel" / f"{split}.txt").write_text(
          "".join(f"{stem}_aligned.jpg {label}\n" for stem, label in names if stem.startswith(split)))
  if subsets:
    # Wang et al.'s formats: "name_aligned label label" with CRLF, and "label/name_aligned.jpg".
    (basic / "EmoLabel" / "rafdb_occlusion_list.txt").write_bytes(
        b"test_0002_aligned 0 4\r\ntest_0005_aligned 3 3\r\ntest_0006_aligned 2 2")
    (basic / "EmoLabel" / "val_raf_db_list.txt").write_text(
        "3/test_0001_aligned.jpg\n5/test_0003_aligned.jpg\n6/test_0004_aligned.jpg\n")
    (basic / "EmoLabel" / "val_raf_db_list_45.txt").write_text("6/test_0004_aligned.jpg\n")
  return out


# ---------------------------------------------------------------------------------------------
# AffectNet: (expression code, valence, arousal) per annotated image.
AFFECTNET_TRAIN = [(0, 0.1, 0.2), (1, 0.5, -0.1), (2, -0.4, 0.3), (8, -2.0, -2.0), (3, 0.2, 0.7),
                   (4, -0.3, 0.8), (10, -2.0, -2.0), (5, -0.6, 0.4), (6, -0.7, 0.6), (7, -0.2, 0.1),
                   (9, 0.0, 0.0), (1, 0.9, 0.3)]
AFFECTNET_VALIDATION = [(code, 0.1 * code, -0.1 * code) for code in range(8)]
AFFECTNET_BOX = (3, 2, 8, 6)  # face_x, face_y, face_width, face_height
FACE_COLOUR = (250, 20, 20)


def _affectnet_image(path, index: int, mode: str = "RGB") -> tuple[int, int, int]:
  """A 16×12 image whose face box is red on a background of the index's colour (returned as RGB)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.new("RGB", (16, 12), colour(index))
  x, y, w, h = AFFECTNET_BOX
  image.paste(FACE_COLOUR, (x, y, x + w, y + h))
  image.convert(mode).save(path, format="JPEG", quality=95)
  return Image.new("RGB", (1, 1), colour(index)).convert(mode).convert("RGB").getpixel((0, 0))


def write_affectnet_subset_lists(root, validation_names: list[str]) -> dict:
  """Wang et al.'s three lists in their formats (the occlusion one beside the CSVs, the pose ones in
  `root`) over the 8 validation images (codes 0-7, in order).

  The pose > 30 list names one image twice; the pose > 45 list gives code 5 to the fear (4) image.
  Returns {split: [validation file names, in list order]}.
  """
  neutral, happy, sad, surprise, fear, *_, contempt = validation_names
  lists = {"validation_occlusion": ("Manually_Annotated_file_lists/occlusion_affectnet_list.txt",
                                    [(0, neutral), (7, contempt)], "val/{code}/{stem}/"),
           "validation_pose30": ("pose_30_affectnet_list.txt", [(1, happy), (2, sad), (1, happy)], "{code}/{stem}.jpg"),
           "validation_pose45": ("pose_45_affectnet_list.txt", [(3, surprise), (5, fear)], "{code}/{stem}/8.jpg")}
  for file_name, entries, line in lists.values():
    (root / file_name).parent.mkdir(parents=True, exist_ok=True)
    (root / file_name).write_text("".join(
        line.format(code=code, stem=name.rsplit("/", 1)[1].removesuffix(".jpg")) + "\n" for code, name in entries))
  return {split: list(dict.fromkeys(name for _, name in entries)) for split, (_, entries, _) in lists.items()}


def write_affectnet_original(root, subsets: bool = False) -> dict:
  """Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/
  (+ Wang et al.'s lists: `write_affectnet_subset_lists`).

  One training image is CMYK and one grayscale, as a few real ones are. Returns
  {"rows": {split: {file_name: (code, valence, arousal, annotation_index)}}, "colour": {...}}
  (+ "subsets": {split: [file names]}).
  """
  header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
            "valence,arousal")
  lists = root / "Manually_Annotated_file_lists"
  lists.mkdir(parents=True)
  out = {"rows": {"train": {}, "validation": {}}, "colour": {}}
  index = 0
  for split, file_name, rows in (("train", "training.csv", AFFECTNET_TRAIN),
                                 ("validation", "validation.csv", AFFECTNET_VALIDATION)):
    lines = [header] if split == "train" else []
    for row_index, (code, valence, arousal) in enumerate(rows):
      name = f"{100 + index}/{index:03d}abcdef{code}.jpg"
      mode = {1: "CMYK", 2: "L"}.get(index, "RGB")
      out["colour"][name] = _affectnet_image(root / "Manually_Annotated_Images" / name, index, mode)
      landmarks = ";".join(str(v) for v in range(10))
      lines.append(",".join([name, *map(str, AFFECTNET_BOX), landmarks, *map(str, (code, valence, arousal))]))
      out["rows"][split][name] = (code, valence, arousal, row_index)
      index += 1
    (lists / file_name).write_text("\n".join(lines) + "\n")
  if subsets:
    out["subsets"] = write_affectnet_subset_lists(root, list(out["rows"]["validation"]))
  return out


def write_affectnet_later(root) -> dict:
  """train_set|val_set/images/{id}.jpg + annotations/{id}_exp|_val|_aro.npy (string scalars).

  Image 4 of train_set has no _val.npy. Returns {"rows": {split: {file_name: (code, valence,
  arousal, annotation_index)}}}.
  """
  out = {"rows": {"train": {}, "validation": {}}}
  for split, folder, rows in (("train", "train_set", AFFECTNET_TRAIN),
                              ("validation", "val_set", AFFECTNET_VALIDATION)):
    for image_id, (code, valence, arousal) in enumerate(rows):
      write_image(root / folder / "images" / f"{image_id}.jpg", image_id)
      annotations = root / folder / "annotations"
      annotations.mkdir(parents=True, exist_ok=True)
      np.save(annotations / f"{image_id}_exp.npy", np.array(str(code)))
      if (split, image_id) != ("train", 4):
        np.save(annotations / f"{image_id}_val.npy", np.array(str(valence)))
      else:
        valence = float("nan")
      np.save(annotations / f"{image_id}_aro.npy", np.array(str(arousal)))
      np.save(annotations / f"{image_id}_lnd.npy", np.zeros(136, np.float32))
      out["rows"][split][f"{folder}/images/{image_id}.jpg"] = (code, valence, arousal, image_id)
  return out


# ---------------------------------------------------------------------------------------------
SFEW_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")


def write_sfew(root) -> dict:
  """Train/ and Val/ frames and Train_Aligned_Faces/, Val_Aligned_Faces/ faces, per class.

  Returns {config: {split: {file_name: label}}, "colour": {file_name: rgb}}.
  """
  out = {config: {"train": {}, "validation": {}} for config in ("aligned", "original")}
  out["colour"] = {}
  index = 0
  for config, folders in (("original", {"train": "Train", "validation": "Val"}),
                          ("aligned", {"train": "Train_Aligned_Faces", "validation": "Val_Aligned_Faces"})):
    for split, folder in folders.items():
      for label, class_name in enumerate(SFEW_CLASSES):
        for k in range(2 if split == "train" else 1):
          name = f"{folder}/{class_name}/Movie_{index:03d}_{k:08d}.png"
          out["colour"][name] = write_image(root / name, index, fmt="PNG")
          out[config][split][name] = label
          index += 1
      (root / folder / "Angry" / "Thumbs.db").write_bytes(b"not an image")
  return out


# ---------------------------------------------------------------------------------------------
FEDRO_FOLDERS = {"neural": 0, "happy": 1, "sad": 2, "surprise": 3, "fear": 4, "disgust": 5, "anger": 6}


def write_fedro(root) -> dict:
  """FED_RO_crop/<neural|happy|...>/*.jpg. Returns {"test": {file_name: label}}."""
  out = {"test": {}}
  for index, (folder, label) in enumerate(FEDRO_FOLDERS.items()):
    for k in range(2):
      name = f"FED_RO_crop/{folder}/{folder}_{k}.jpg"
      write_image(root / name, 2 * index + k)
      out["test"][name] = label
  return out


def corrupt(path) -> None:
  """Truncates an image file so it cannot be decoded."""
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 3])
