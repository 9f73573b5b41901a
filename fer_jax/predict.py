r"""Class probabilities for face crops, and for the faces in photos and videos.

  python -m fer_jax.predict [--config=configs/dan.py:rafdb] --checkpoint=DIR \
      --input=IMAGE_VIDEO_OR_FOLDER --output=preds.csv [--tta=flip] [--batch_size=64] \
      [--detect | --nodetect] [--annotate=DIR] [--stride=N] [--smooth=0.9]

--checkpoint is a training workdir, a converted checkpoint or a `fer_jax.export` folder (checked against
--config as a checkpoint is). Without --config its meta record gives the model, as for `fer_jax.load`.
Face crops are decoded on the host at the shape the model's training decoded its data set to (its
record's, `inference.FilePreprocessor`: grey for FER2013, FERPlus and grey sets of yours), and go through
the method's own test-time pipeline (`config.input.eval_pp`) on the device, in batches (the last one padded
to a power of two, so few steps are compiled).
With --tta the probabilities are the weighted mean of the softmax over that `fer_jax.tta` view
set (the logits stay those of the image itself).

Which inputs are photos: videos (`video.EXTENSIONS`: .mp4 .avi .mov .mkv .webm .m4v .wmv .flv .3gp .mpg
.mpeg .ts .mts .m2ts, read with OpenCV) always; an image when --detect, or by default when it is not a face crop,
i.e. not nearly square (sides within 25 %) or larger than twice the stored side (at least 128 px). In a photo or
every --stride-th frame (and the first read, where frame 0 is damaged), MTCNN (`fer_jax.face`) finds each face with
five landmarks; the face is cropped as the config's data set was (`fer_jax.face.align`: RAF-DB similarity-aligned,
others a box with a margin; grey 48×48 for FER2013-style inputs) and classified. The detector searches for faces
down to 5/6 of --min_face_size (at least 12 px); faces smaller than it or scored below --min_score are written
unclassified, with the reason. A video's faces are followed from frame to frame by their boxes (the track,
`fer_jax.face.tracks`; a face not found or not classified keeps its track for up to 25 processed frames); a frame's
time is its own timestamp; --smooth=W averages each track's probabilities over time, W being the past's weight per
frame of the video (p ← Wⁿ·p_before + (1 − Wⁿ)·p_now, n the frames since the track's last classified face: --stride=5
gives n = 5), so --stride does not change how long the smoothing spans.
--annotate writes every photo and processed frame with its boxes, landmarks and labels drawn (`fer_jax.face.draw`), as
PNGs named after the input with its extension (photo.jpg.png, clip.mp4/frame_000015.png; a name over 255 bytes is cut
short and ended by a hash); face crops are not drawn (one warning says so). A drawing that cannot be written (a full
disk) stops the drawing with one warning, not the run.

Per crop or face the output holds the top class, its probability, the probability of every class (named in the
config's class order) and the logits; for faces also the video frame's index and time, the face's index (left to
right), track (none for a photo's faces and those not classified), box, landmarks, detection score and why it was
skipped; `.csv` or `.json` by the output's extension, written whole or not at all (through a temporary file; a
file name's bytes that are not UTF-8 written as "\udce9"). An output that cannot be written at the end (a full disk)
keeps the rows: they go to a file named after it in the temporary folder (`spill_path`), which the error names. A
folder is searched recursively for images and videos (one line counts the files left out, by extension). Inputs
without a row of their own are listed with the reason and warned about: a face crop smaller than --min_face_size, a
photo or video in which no face is found, and unreadable inputs (an empty file, not an image, corrupt, truncated,
unreadable, a symbolic-link loop, or a header claiming more than `fer_jax.data.decode.MAX_IMAGE_PIXELS`; a truncated
or non-video file named as a video, or one without a frame; a folder that cannot be listed), which are counted. A
video's frames that cannot be read (a damaged file) are passed over, with one warning giving their number. Images
are read upright (their EXIF orientation applied); a float image (a TIFF of mode "F") with values in [0, 1] is
scaled by 255. A missing or empty --input, an --output or --annotate that could not be written, or an --annotate
inside the --input folder (its drawings would be read as photos by the next run) fails before the model is loaded.
The log gives each prediction when there are at most `FEW_ROWS` rows, then the counts and the output's absolute
path.
SIGINT (Ctrl-C) or SIGTERM stops the run after the image or video frame in hand: the rows done, the input cut off
("interrupted at frame N") and those not reached listed as skipped, go to a partial file beside the output
(`partial_path`: preds.partial.csv, replaced by each partial run), an earlier output left as it was, and the command
exits with status 75 (run it again for the whole output: it predicts every input anew, and removes the partial file);
a second signal exits at once, writing nothing. An error mid-run (a bug, a failing device) writes the rows done
likewise, the inputs left (and those whose queued faces the error lost) listed as "not done: the run failed
(ErrorType) in NAME", then fails as it would have.
"""

import csv
import dataclasses
import json
import os
import sys
import tempfile

from absl import flags
from absl import logging
import numpy as np
import tqdm

from fer_jax import api
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import errors
from fer_jax import files
from fer_jax import inference
from fer_jax import mesh as mesh_lib
from fer_jax import stopping
from fer_jax import tta
from fer_jax.data import decode
from fer_jax.data import video
from fer_jax.errors import UserError
from fer_jax.face import draw
from fer_jax.face import tracks

NO_FACE = "no face found"  # the reason a photo or video without a face has no row


def check_output(path: str) -> None:
  """Fails fast, before any model or image is loaded, if the predictions could not be written to `path`."""
  if not path.lower().endswith((".csv", ".json")):
    raise UserError(f"--output={path} must end in .csv or .json.")
  cli.check_writable_file("--output", path, "a file path ending in .csv or .json")


def check_annotate(path: str, input_path: str = "") -> None:
  """Fails fast unless --annotate, if given, is a folder (new or existing) where the drawn photos can be written,
  outside a folder given as --input (`input_path`), and not the folder of a photo given as --input: a later run (over
  that folder) would read its drawings as photos."""
  if not path:
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--annotate={path} is a file: pass a folder (new or existing) for the drawn photos.")
  if os.path.isdir(input_path) and files.is_within(path, input_path):
    raise UserError(f"--annotate={path} is inside --input={input_path}: the next run would read its drawings as "
                    "photos. Pass a folder outside --input.")
  if os.path.isfile(input_path) and os.path.realpath(path) == os.path.realpath(os.path.dirname(input_path) or "."):
    raise UserError(f"--annotate={path} is the folder of --input={input_path}: a run over that folder would read its "
                    "drawings as photos. Pass another folder.")
  cli.check_writable_place(f"--annotate={path}", path)


@dataclasses.dataclass
class _Frame:
  """One photo or video frame (or a face crop) waiting for its faces to be classified."""
  source: str
  image: np.ndarray | None          # the photo, kept only to annotate it
  rows: list[dict]
  crops: list[np.ndarray]           # one per row whose "skipped" is empty, in order
  name: str = ""                    # the annotated file's name
  frame: int | None = None          # a video frame's index in the video


class FacePredictions:
  """Rows of predictions for face crops, photos and video frames, classified in device-sized batches.

  `add_*` queue a crop or a photo's faces; the queued crops are classified in whole batches of `batch_size` (all of
  them at the end, or once 16 photos are queued when annotating), and each frame whose faces all are is followed (and
  smoothed) over its video's face tracks, drawn, and appended to `rows`, in input order. `skipped`: (input, reason)
  of each input without a row of its own, the `unreadable` ones among them, and the inputs a stop signal `cut_off`
  (the one in hand, those not reached). A drawing that cannot be written is warned about and stops the drawing
  (`annotate` emptied), not the run."""

  def __init__(self, model: api.Model, min_face_size: float, min_score: float, smooth: float = 0.0,
               annotate: str = "", max_side: int = 0):
    api.check_limits(min_face_size, min_score, max_side)
    self.model, self.min_face_size, self.min_score, self.max_side = model, min_face_size, min_score, max_side
    self.smooth, self.annotate = smooth, annotate
    self.rows, self.skipped, self.unreadable, self.cut_off, self.faces_skipped = [], [], [], [], 0
    self.failed: Exception | None = None  # what stopped the run (`fail`), raised once the output is written
    self._queue, self._tracks, self._told_crops_are_not_drawn = [], tracks.Tracks(), False
    self._classified: list[api.Prediction] = []  # of the first queued frames' faces

  def add_image(self, path: str, name: str, detect: bool | None) -> None:
    """Queues an image, read once, as a face crop or as a photo's faces (`predict_inputs` says which)."""
    try:
      with decode.opened(path) as image:
        is_crop = self.model.is_face_crop(*image.size) if detect is None else not detect
        if is_crop and (reason := api.size_reason(min(image.size), self.min_face_size)):
          return self.skip(path, reason)
        pixels = decode.to_stored(image, self.model.predictor.preprocess.shape) if is_crop else decode.rgb(image)
    except decode.UnreadableImageError as error:
      return self.skip_unreadable(path, error)
    if is_crop:
      self._tell_crops_are_not_drawn(path)
      self._push(_Frame(path, None, [{"image": path}], [pixels]))
    elif not self.add_frame(path, pixels, name):
      self.skip(path, NO_FACE, "if it is a face crop, pass --nodetect")

  def add_frame(self, source: str, image: np.ndarray, name: str, frame: int | None = None,
                time: float | None = None) -> int:
    """Queues the faces found in `image` (a photo, or a video's `frame` at `time` seconds); returns how many."""
    found, crops, reasons = self.model.faces(image, self.min_face_size, self.min_score, self.max_side)
    rows = [{"image": source, "frame": frame, "time": time, "face": i, "track": None, "box": list(face.box),
             "landmarks": [list(point) for point in face.landmarks], "score": face.score, "skipped": reason or None}
            for i, (face, reason) in enumerate(zip(found, reasons))]
    self.faces_skipped += sum(bool(reason) for reason in reasons)
    self._push(_Frame(source, image if self.annotate else None, rows, [c for c in crops if c is not None], name,
                      frame))
    return len(found)

  def skip(self, path: str, reason: str, fix: str = "") -> None:
    logging.warning("Skipping %s: %s%s.", path, reason, f" ({fix})" if fix else "")
    self.skipped.append((path, reason))

  def skip_unreadable(self, path: str, error: Exception) -> None:
    logging.warning("Skipping unreadable input: %s", error)
    self.count_unreadable([(path, str(error))])

  def count_unreadable(self, inputs: list[tuple[str, str]]) -> None:
    """Lists (input, reason) as unreadable and skipped, without a warning (given already as the folders were listed:
    `inference.list_images`'s unreadable)."""
    self.skipped += inputs
    self.unreadable += inputs

  def _tell_crops_are_not_drawn(self, path: str) -> None:
    if self.annotate and not self._told_crops_are_not_drawn:
      logging.warning("--annotate draws photos and video frames, not face crops such as %s (classified whole, they "
                      "have no box to draw); pass --detect to search them for faces and draw those.", path)
      self._told_crops_are_not_drawn = True

  def fail(self, paths: list[str], error: Exception) -> None:
    """An error stopped the run in `paths[0]` (a bug, a failing device): the rows done are kept, the frames queued
    classified where the model still runs, and `paths` (and the inputs of frames lost) listed as cut off, to be
    written before `error` is raised again (`failed`)."""
    lost = []
    try:
      self.flush()
    except Exception:  # pylint: disable=broad-except  (it fails again, in the frame in hand: those left are lost)
      lost, self._queue, self._classified = list(dict.fromkeys(frame.source for frame in self._queue)), [], []
    failing = lost[0] if lost else paths[0] if paths else ""
    reason = f"not done: the run failed ({type(error).__name__}) in {os.path.basename(failing)}"
    self.cut([path for path in lost if path not in paths], reason)
    self.cut(paths, reason)
    self.failed = error

  def cut(self, paths: list[str], reason: str) -> None:
    """Lists `paths` as skipped for `reason`, without a warning each: one line says the output is partial."""
    self.skipped += [(path, reason) for path in paths]
    self.cut_off += paths

  def _push(self, frame: _Frame) -> None:
    self._queue.append(frame)
    self.flush(whole_batches=not (self.annotate and len(self._queue) >= 16))  # drawings hold their pictures

  def flush(self, whole_batches: bool = False) -> None:
    """Classifies the queued frames' faces not classified yet (with `whole_batches`, as many as fill whole batches:
    every device step full), then takes each frame whose faces all are, in turn (an error leaves in the queue only
    the frames not taken)."""
    waiting = [crop for frame in self._queue for crop in frame.crops][len(self._classified):]
    batch_size = self.model.predictor.batch_size
    if count := len(waiting) // batch_size * batch_size if whole_batches else len(waiting):
      self._classified += self.model.classify(waiting[:count])
    while self._queue and len(self._queue[0].crops) <= len(self._classified):
      frame = self._queue[0]
      predictions = iter(self._classified[:len(frame.crops)])
      for row in frame.rows:
        if not row.get("skipped"):
          _fill(row, next(predictions))
      if frame.frame is not None:  # a frame without a face counts toward its video's tracks' end
        self._tracks.follow(frame.source, frame.rows, self.smooth, self.model.class_names)
      if frame.image is not None and self.annotate:
        self._draw(frame)
      del self._classified[:len(frame.crops)]  # with the frame: an error before this leaves both as they were
      self.rows.extend(self._queue.pop(0).rows)

  def _draw(self, frame: _Frame) -> None:
    path = os.path.join(self.annotate, frame.name)
    try:
      draw.draw_faces(frame.image, frame.rows, path)
    except OSError as error:
      logging.warning("Stopped drawing: %s cannot be written (%s); the predictions go on. Fix --annotate=%s or pass "
                      "another, then run again for the drawings.", path, error.strerror or error, self.annotate)
      self.annotate = ""


def _fill(row: dict, prediction: api.Prediction) -> None:
  row.update(prediction=prediction.label, confidence=prediction.confidence,
             probabilities=prediction.probabilities, logits=prediction.logits)


def predict_inputs(model: api.Model, paths: list[str], root: str, detect: bool | None, min_face_size: float,
                   min_score: float, stride: int = 1, smooth: float = 0.0, annotate: str = "",
                   max_side: int = 0) -> FacePredictions:
  """Every input (face crop, photo or video under `root`) through the model. Videos always go
  through face detection; images, with `detect` None, unless `model.is_face_crop` (nearly square and
  small), with True/False always/never. SIGINT or SIGTERM stops the loop once the image or video frame in hand
  is done: the inputs it leaves undone are listed as skipped (`cut_off`), the rows done kept; an error, likewise
  (`FacePredictions.fail`), for the caller to raise once it wrote them."""
  results, position = FacePredictions(model, min_face_size, min_score, smooth, annotate, max_side), 0
  with stopping.StopSignals("stopping after the image or video frame in hand, then writing the rows done (send "
                             "it again, a second or more later, to exit at once, writing nothing).") as stop:
    try:
      for position, path in enumerate(progress(paths, "inputs")):
        if stop.received:
          results.cut(paths[position:], f"not reached: stopped by {stop.received}")
          break
        # The drawings' names keep the input's extension: photo.jpg and photo.png are drawn apart.
        name = os.path.relpath(path, root) if os.path.isdir(root) else os.path.basename(path)
        if video.is_video(path):  # --nodetect is for images: a video's frames are not crops
          _add_video(results, path, name, stride, stop)
        else:
          results.add_image(path, draw.drawing_name(name), detect)
      results.flush()
    except Exception as error:  # pylint: disable=broad-except  (raised again once the rows done are written)
      results.fail(paths[position:], error)
  return results


def detects_faces(paths: list[str], detect: bool | None) -> bool:
  """Whether a run may find faces (its output then has the face columns, found or not): unless --nodetect
  without a video."""
  return detect is not False or any(map(video.is_video, paths))


def _add_video(results: FacePredictions, path: str, name: str, stride: int, stop: stopping.StopSignals) -> None:
  try:
    frames, count = video.frames(path, stride)
  except decode.UnreadableImageError as error:
    return results.skip_unreadable(path, error)
  found = processed = 0
  for index, time, frame in progress(frames, os.path.basename(path), -(-count // stride) or None):
    if stop.received:  # before the next frame: a video whose last frame was in hand is complete
      frames.close()
      return results.cut([path], f"interrupted at frame {index} by {stop.received}")
    found += results.add_frame(path, frame, os.path.join(name, f"frame_{index:06d}.png"), index, time)
    processed += 1
  if not processed:  # not one frame read: the first read is processed at any --stride
    return results.skip_unreadable(path, decode.UnreadableImageError(
        f"{path} has no frames that can be read: re-export it (to MP4, say), or remove it."))
  if not found:
    results.skip(path, NO_FACE, f"in any frame read at --stride={stride}")


def progress(items, what: str, total: int | None = None):
  """A progress bar with the rate and time left on a terminal; nothing otherwise."""
  return tqdm.tqdm(items, desc=what, total=total, disable=None, leave=False)


LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


FACE_KEYS = ("frame", "time", "face", "track", "box", "landmarks", "score")  # a JSON row's, written out in a CSV's:
FACE_COLUMNS = ("frame", "time", "face", "track", "x1", "y1", "x2", "y2",
                *(f"{p}_{axis}" for p in LANDMARKS for axis in "xy"), "score")


def write_predictions(rows: list[dict], skipped: list[tuple[str, str]], class_names, path: str,
                      face_columns: bool) -> None:
  """JSON (the rows, and the inputs skipped with their reason) or CSV: one row per crop or face, then one per
  input skipped. Columns: image, [frame (a video frame's index), time (its seconds), face, track, box,
  landmarks, score: with `face_columns`], skipped (why it holds no prediction), prediction, confidence,
  p_<class>…, logit_<class>… (in JSON, probabilities and logits as {class: value}; every row has every key, null
  where it has no value). The file appears whole or not at all (a failure leaves a previous one as it was)."""
  os.makedirs(os.path.dirname(os.path.realpath(path)), exist_ok=True)
  # In UTF-8, a file name's bytes that are not (Python holds them as surrogates) written as the log and JSON show
  # them, "\udce9": the CSV stays valid UTF-8, which every reader takes.
  with files.written_whole(path, newline="", encoding="utf-8", errors="backslashreplace") as f:
    if path.lower().endswith(".json"):
      keys = ["image", *(FACE_KEYS if face_columns else ()), "skipped", "prediction", "confidence", "probabilities",
              "logits"]
      json.dump({"class_names": list(class_names), "predictions": [{key: row.get(key) for key in keys} for row in rows],
                 "skipped": [{"image": image, "reason": reason} for image, reason in skipped]}, f, indent=2)
      return
    writer = csv.writer(f)
    writer.writerow(["image", *(FACE_COLUMNS if face_columns else ()), "skipped", "prediction", "confidence",
                     *(f"p_{c}" for c in class_names), *(f"logit_{c}" for c in class_names)])
    for row in [*rows, *({"image": image, "skipped": reason} for image, reason in skipped)]:
      classified = "prediction" in row
      writer.writerow([row["image"], *(_face_fields(row) if face_columns else ()), row.get("skipped") or "",
                       row.get("prediction", ""), f"{row['confidence']:.6f}" if classified else "",
                       *(f"{row['probabilities'][c]:.6f}" if classified else "" for c in class_names),
                       *(f"{row['logits'][c]:.6f}" if classified else "" for c in class_names)])


def write_output(results: FacePredictions, class_names, output: str, face_columns: bool) -> str:
  """Writes the rows (`write_predictions`) to `output`, or, where the run stopped early, to `partial_path(output)`:
  a partial result never replaces an earlier output. A complete run removes the partial file an earlier run left.
  Returns the path written; where it cannot be written (a full disk), the rows go to `spill_path` and a UserError
  names it, the cause and the fix."""
  path = partial_path(output) if results.cut_off else output
  try:
    write_predictions(results.rows, results.skipped, class_names, path, face_columns)
  except OSError as error:
    raise _spilled(results, class_names, path, face_columns, error) from error
  if not results.cut_off:
    _remove_stale(partial_path(output), output)
  return path


def partial_path(output: str) -> str:
  """Where a run stopped early writes its rows: beside `output` (preds.csv: preds.partial.csv)."""
  stem, suffix = os.path.splitext(output)
  return f"{stem}.partial{suffix}"


def spill_path(path: str) -> str:
  """Where the rows go when `path` cannot be written: the temporary folder, likely on another disk (preds.csv:
  /tmp/preds.<pid>.csv, the process id keeping an earlier run's spill)."""
  stem, suffix = os.path.splitext(os.path.basename(path))
  return os.path.join(tempfile.gettempdir(), f"{stem}.{os.getpid()}{suffix}")


def _spilled(results: FacePredictions, class_names, path: str, face_columns: bool, error: OSError) -> UserError:
  spill, cause = spill_path(path), error.strerror or str(error)
  try:
    write_predictions(results.rows, results.skipped, class_names, spill, face_columns)
  except OSError as spill_error:
    return UserError(f"{path} could not be written ({cause}), nor {spill} ({spill_error.strerror or spill_error}): "
                     "the predictions are lost. Free space or choose another --output, then run again.")
  return UserError(f"{path} could not be written ({cause}); the predictions went to {spill} instead. Free space or "
                   "choose another --output.")


def _remove_stale(partial: str, output: str) -> None:
  try:
    os.remove(partial)
  except FileNotFoundError:
    pass
  except OSError as error:
    logging.warning("%s, left by a run stopped early, could not be removed (%s): %s is the complete output.", partial,
                    error.strerror, output)


def _face_fields(row: dict) -> list:
  if "face" not in row:
    return [""] * len(FACE_COLUMNS)
  frame, time = ("", "") if row["frame"] is None else (row["frame"], f"{row['time']:.3f}")
  points = [f"{v:.1f}" for point in row["landmarks"] for v in point]
  track = "" if row["track"] is None else row["track"]
  return [frame, time, row["face"], track, *(f"{v:.1f}" for v in row["box"]), *points, f"{row['score']:.4f}"]


FEW_ROWS = 10  # up to this many rows are logged one by one; beyond, the summary alone


def log_results(results: FacePredictions, inputs: int, written: str, output: str) -> None:
  """Each row's prediction when there are few, then what was `written` for `output` (there, or where the run stopped
  early beside it: `write_output`) and what was skipped of the `inputs` (each skipped input was named in its warning),
  and whether the run stopped early."""
  if len(results.rows) <= FEW_ROWS:
    for row in results.rows:
      logging.info("%s", row_summary(row))
  predictions = sum("prediction" in row for row in results.rows)
  skipped = inference.skipped_summary(len(results.skipped) - len(results.cut_off), inputs, len(results.unreadable),
                                     "input")
  logging.info("Wrote %s to %s%s.", errors.counted(predictions, "prediction"), written, skipped)
  if results.faces_skipped:
    logging.info("%s not classified, too small (< --min_face_size=%g px) or too unsure (< --min_score=%g): the "
                 "output's rows say why.", errors.counted(results.faces_skipped, "face"), results.min_face_size,
                 results.min_score)
  if results.cut_off:
    logging.warning("Stopped early: %s is partial (%s not done, listed as skipped); %s is not replaced. Run the "
                    "command again for the whole output: it predicts every input anew.", written,
                    errors.counted(len(results.cut_off), "input"), output)


def row_summary(row: dict) -> str:
  """"photo.jpg face 0: happiness (93.1%)", "clip.mp4 frame 15 face 1: not classified (why)"."""
  where = row["image"] + (f" frame {row['frame']}" if row.get("frame") is not None else "")
  where += f" face {row['face']}" if "face" in row else ""
  if "prediction" not in row:
    return f"{where}: not classified ({row['skipped']})"
  return f"{where}: {row['prediction']} ({row['confidence']:.1%})"


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("configs/<method>.py:<dataset> of the checkpoint; default: its meta record's.")
  cli.define_path("checkpoint", None, "Training workdir, checkpoint folder, converted model or export folder.")
  cli.define_path("input", None, "An image or video, or a folder searched recursively for them.")
  cli.define_path("output", None, "Where to write the predictions: .csv or .json.")
  flags.DEFINE_enum("tta", None, list(tta.NAMES), "Test-time augmentation; default: config.eval.tta.")
  flags.DEFINE_integer("batch_size", 64, "Images per device step (rounded up to the device count).", lower_bound=1)
  flags.DEFINE_bool("detect", None, "Find faces in every image (--nodetect: images are face crops); "
                    "default: videos and images that are not face crops (see the module's docstring).")
  flags.DEFINE_float("min_face_size", api.MIN_FACE_SIZE, "Faces (detected boxes, face crops) with a shorter side "
                     "(pixels) are not classified; the detector searches for faces down to 5/6 of it.", lower_bound=0.0)
  flags.DEFINE_float("min_score", api.MIN_SCORE, "Faces with a lower detection score are not classified.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("detect_max_side", 0, "Search for faces in a copy of each photo and frame reduced to this "
                       "longer side in pixels (0: the picture itself): faster on large photos, but faces under 12 px "
                       "in the copy are not found; faces are aligned from the full picture.", lower_bound=0)
  flags.DEFINE_integer("stride", 1, "Videos: every N-th frame.", lower_bound=1)
  flags.DEFINE_float("smooth", 0.0, "Videos: weight of the past in each face track's moving average, per frame of "
                     "the video whatever --stride (after n frames: smooth**n; 0 = off).", lower_bound=0.0,
                     upper_bound=0.99)
  cli.define_path("annotate", "", "Folder to write the photos and frames to, with faces drawn and labelled.")
  cli.mark_required(["checkpoint", "input", "output"])


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  check_output(args.output)
  check_annotate(args.annotate, args.input)
  api.check_limits(args.min_face_size, args.min_score, args.detect_max_side)
  unlisted = []
  paths = inference.list_images(args.input, decode.IMAGE_SUFFIXES + video.EXTENSIONS, unlisted)
  mesh_lib.keep_compilations()
  model = api.load(args.checkpoint, config=args.config, tta=args.tta or "", batch_size=args.batch_size)
  results = predict_inputs(model, paths, args.input, args.detect, args.min_face_size, args.min_score, args.stride,
                           args.smooth, args.annotate, args.detect_max_side)
  results.count_unreadable(unlisted)  # warned about as they were listed
  inputs = len(paths) + len(unlisted)
  try:
    written = write_output(results, model.class_names, args.output, detects_faces(paths, args.detect))
  except UserError as error:
    if not results.failed:
      raise
    logging.error("%s", error)  # the run's own error, raised below (outside this block: its traceback, not this line)
  else:
    log_results(results, inputs, os.path.abspath(written), os.path.abspath(args.output))
  if results.failed:
    raise results.failed
  if results.cut_off:
    sys.exit(stopping.PREEMPTED_EXIT_STATUS)
  if len(results.unreadable) == inputs:
    raise inference.no_readable_image(f"under --input={args.input}", results.unreadable, "input")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
