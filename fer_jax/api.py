"""The Python API: a trained, converted or exported model as an object that classifies faces.

  import fer_jax
  model = fer_jax.load("workdirs/dan_rafdb", config="configs/dan.py:rafdb")
  for face in model.detect_and_predict("group.jpg"):
    print(face.index, face.box, face.prediction.label if face.prediction else face.skipped)
  model.predict(["crop1.png", crop_array])  # face crops: one Prediction each, None for one below min_face_size px
                                            # (paths, PIL images, uint8 arrays; or a stacked array)

`load` accepts a training workdir (the weights its report evaluated, `best/STEP` with restore_best, else
its newest checkpoint), a checkpoints/ or step folder, the
output of `python -m fer_jax.convert`, or a `python -m fer_jax.export` folder (run through its
StableHLO program, no model code). Without `config`, a checkpoint's meta record (an export's
model.json) gives the model, its input, its class order, the data set (its stored image size and
alignment, `fer_jax.face.align`) and the test-time augmentation. A `config` is checked against an
export's record as against a checkpoint's, and gives the test-time augmentation and what records
written before 2026-12-03 lack (the data set). With a config or without, the record gives the shape
a trained model's images were decoded to (a converted model's, and older records', go by the config).
`python -m fer_jax.predict` is a command line over this API.
"""

import contextlib
import dataclasses
import io
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import export
from fer_jax import inference
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import tta as tta_lib
from fer_jax import validation
from fer_jax.data import decode
from fer_jax.data import video
from fer_jax.errors import UserError
from fer_jax.errors import with_article
from fer_jax.face import align
from fer_jax.face import detector

MIN_FACE_SIZE, MIN_SCORE = 24.0, 0.9
# The detector searches for faces down to this fraction of min_face_size (MTCNN's usual 20 px at the default
# 24), so that faces just below it are found and reported as too small, and none far below are searched for.
SEARCH_BELOW_MIN_FACE_SIZE = 5 / 6


@dataclasses.dataclass(frozen=True)
class Prediction:
  label: str
  confidence: float
  probabilities: dict[str, float]  # with a test-time augmentation, its views' mean
  logits: dict[str, float]         # the plain forward pass's, with a test-time augmentation too


@dataclasses.dataclass(frozen=True)
class FaceResult:
  index: int                     # left to right in the photo
  box: tuple[float, float, float, float]  # (left, top, right, bottom), as landmarks in the upright photo's pixels
  landmarks: tuple[tuple[float, float], ...]  # (x, y): eyes, nose, mouth corners (`detector.Face`)
  score: float                   # the detector's face probability
  prediction: Prediction | None  # None when skipped
  skipped: str = ""              # why the face was not classified ("" if it was)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """"configs/dan.py:rafdb" (a path, then the argument) as `--config` reads it; a config file's refusal of its
  argument (`config_lib.parse_arg`'s ValueError) as a UserError naming `config=`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"config={spec!r}: {path} is not a file; pass configs/<method>.py:<dataset>.")
  module = config_lib.config_module(path)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as error:
    raise UserError(f"config={spec!r}: {error}") from None


def _as_config(config) -> ml_collections.ConfigDict | None:
  """`fer_jax.load`'s `config`: None, a ConfigDict, or "configs/<method>.py:<dataset>" (a str or os.PathLike)."""
  if isinstance(config, (str, os.PathLike)):
    return load_config(os.fspath(config))
  if config is None or isinstance(config, ml_collections.ConfigDict):
    return config
  raise UserError(f"config= takes an ml_collections.ConfigDict or \"configs/<method>.py:<dataset>\", not "
                  f"{with_article(type(config).__name__)}.")


def _using_tta(config: ml_collections.ConfigDict, tta_name: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose eval.tta is the test-time augmentation the model runs: `tta_name`, else its own."""
  config = config.copy_and_resolve_references()
  config.eval.tta = tta_name or config.eval.tta
  return config


def _load_export(path: str, config, tta_name: str, batch_size: int) -> inference.Predictor:
  """The export's own record gives the model and its inputs; a `config` is checked against it as for a
  checkpoint, gives the test-time augmentation and fills what older exports did not record."""
  info = export.read_metadata(path)
  meta = export.meta_record(info)
  if config is not None:
    validation.validate(config, training=False)
    export.check_export_identity(path, meta, config)
    meta = {"dataset": checkpointing.dataset_record(config), **meta, "tta": config.eval.tta}
  config = _using_tta(checkpointing.config_from_meta(meta), tta_name)
  exported = export.read_program(path)
  variables = export.read_variables(path, exported)
  fixed_batch = export.fixed_batch_size(path, info, exported)

  def logits(variables, images):
    if not fixed_batch:
      return exported.call(variables, images)["logits"]
    padding = [(0, fixed_batch - images.shape[0])] + [(0, 0)] * (images.ndim - 1)  # the program's one batch size
    return exported.call(variables, jnp.pad(images, padding))["logits"][:images.shape[0]]

  # A fixed-batch program takes the whole batch: it runs on one device, in steps of at most its batch (padded to it).
  mesh = mesh_lib.make_mesh(jax.local_devices()[:1]) if fixed_batch else None
  return inference.Predictor(config, variables, config.eval.tta, fixed_batch or batch_size,
                             logits_fn=logits, mesh=mesh, stored_shape=checkpointing.recorded_shape(meta))


def _load_checkpoint(path: str, config, tta_name: str, batch_size: int) -> inference.Predictor:
  step_directory = checkpointing.step_folder(path)  # once: a workdir still training saves newer steps
  meta = checkpointing.read_meta(step_directory)
  if config is None:
    config = export.config_from_record(meta, f"The checkpoint at {path}",
                                       "pass its config (fer_jax.load(path, config=...), or --config)")
  validation.validate(config, training=False)
  config = _using_tta(config, tta_name)
  variables = models.load_trained_variables(config, models.build_model(config), step_directory)
  return inference.Predictor(config, variables, config.eval.tta, batch_size,
                             stored_shape=checkpointing.recorded_shape(meta))


def load(path: str, config=None, tta: str = "", batch_size: int = 64) -> "Model":
  """The model at `path`; `config` a ConfigDict or "configs/<method>.py:<dataset>" (a str or os.PathLike). `tta`
  (default: the config's, else the recorded one) is the test-time augmentation it runs, which its `config.eval.tta`
  then says."""
  path = os.path.expanduser(path)
  _check_arguments(tta, batch_size)
  config = _as_config(config)
  if export.is_export(path):
    return Model(_load_export(path, config, tta, batch_size))
  if export.is_onnx_export(path):
    raise UserError(f"{path} is an ONNX export: run it in ONNX Runtime (its model.json says how); fer_jax.load and "
                    "predict read the default export (`python -m fer_jax.export` without --format=onnx).")
  return Model(_load_checkpoint(path, config, tta, batch_size))


def _check_arguments(tta_name: str, batch_size: int) -> None:
  """Refused here, with the argument's name: later they would fail deep inside, naming a config key."""
  if tta_name and tta_name not in tta_lib.NAMES:
    raise UserError(f"tta={tta_name!r} is no test-time augmentation: pass one of {', '.join(tta_lib.NAMES)}, "
                    "or \"\" for the config's.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise UserError(f"batch_size={batch_size!r} must be a positive integer (the images of a device step).")


def as_rgb(image) -> np.ndarray:
  """A uint8 array [height, width] or [height, width, 1–4 channels] as RGB [height, width, 3]: grey repeated,
  alpha dropped (as PIL's convert("RGB")); a UserError naming the fix for any other array."""
  array = np.asarray(image)
  if image is None or array.dtype == object:
    raise UserError(f"An image is a path, an open binary file, a PIL image or a uint8 array, not a "
                    f"{type(image).__name__}.")
  image = array
  channels = 1 if image.ndim == 2 else image.shape[-1] if image.ndim == 3 else 0
  if image.dtype != np.uint8 or channels not in (1, 2, 3, 4) or 0 in image.shape[:2]:
    fixes = "; ".join(_conversions(image))
    raise UserError(f"An image array must be uint8 [height, width] or [height, width, channels] with 1 (grey), 2 "
                    f"(grey, alpha), 3 (RGB) or 4 (RGBA) channels, got {image.dtype} {image.shape}: convert it"
                    + (f" ({fixes})." if fixes else "."))
  image = image.reshape(*image.shape[:2], channels)
  return image[..., :3] if channels >= 3 else np.repeat(image[..., :1], 3, axis=-1)


def _conversions(image: np.ndarray) -> list[str]:
  """The conversions an array `as_rgb` refuses needs, by its axes (channels first, as PyTorch's) and its type."""
  conversions = []
  if image.ndim == 3 and image.shape[0] <= 4 < image.shape[-1]:
    conversions.append("channels first: np.moveaxis(image, 0, -1)")
  finite = image[np.isfinite(image)] if np.issubdtype(image.dtype, np.floating) else image
  if np.issubdtype(image.dtype, np.floating) and finite.size and finite.max() > 1:
    conversions.append("floats in 0–255: np.clip(image, 0, 255).round().astype(np.uint8)")
  elif np.issubdtype(image.dtype, np.floating):
    conversions.append("floats in 0–1: (image * 255).round().astype(np.uint8)")
  elif image.dtype == np.uint16:
    conversions.append("16-bit: (image // 257).astype(np.uint8)")
  elif image.dtype == np.bool_:
    conversions.append("a mask: (image * 255).astype(np.uint8)")
  elif image.dtype != np.uint8:
    conversions.append(f"{image.dtype}: scale it to 0–255 if needed, then image.astype(np.uint8)")
  return conversions


def check_limits(min_face_size: float, min_score: float = MIN_SCORE, max_side: int = 0) -> None:
  for name, value in (("min_face_size", min_face_size), ("min_score", min_score), ("max_side", max_side)):
    if isinstance(value, (bool, str, bytes)) or np.ndim(value) or not np.issubdtype(np.asarray(value).dtype, np.number):
      raise UserError(f"{name}={value!r} must be a number, not a {type(value).__name__}.")
  if not min_face_size >= 0:
    raise UserError(f"min_face_size={min_face_size:g} must be 0 or more (pixels of a face's shorter side).")
  if not 0 <= min_score <= 1:
    raise UserError(f"min_score={min_score:g} must be between 0 and 1 (the detector's face probability).")
  if max_side and not max_side >= detector.CELL:
    raise UserError(f"max_side={max_side} must be 0 (the whole picture) or at least {detector.CELL} pixels (the "
                    "detector's smallest face), e.g. 1600.")


class Model:
  """Classifies face crops (`predict`) and the faces of photos (`detect_and_predict`)."""

  def __init__(self, predictor: inference.Predictor):
    self.predictor = predictor
    self.config = predictor.config
    self.class_names = predictor.class_names
    self.alignment = align.alignment_for(self.config)
    self._detectors = {}  # by the smallest face searched for

  def detector_for(self, min_face_size: float) -> detector.Detector:
    """The detector whose image pyramid stops a little below faces of `min_face_size` px
    (`SEARCH_BELOW_MIN_FACE_SIZE`; at its 12-px window at the least: below that it would enlarge the photo)."""
    smallest = max(float(min_face_size) * SEARCH_BELOW_MIN_FACE_SIZE, float(detector.CELL))
    if smallest not in self._detectors:
      self._detectors[smallest] = detector.Detector(min_face_size=smallest)
    return self._detectors[smallest]

  @property
  def detector(self) -> detector.Detector:
    """The detector `detect_and_predict` runs by default (for faces of at least `MIN_FACE_SIZE` px)."""
    return self.detector_for(MIN_FACE_SIZE)

  def is_face_crop(self, width: int, height: int) -> bool:
    return inference.is_face_crop(width, height, self.predictor.preprocess.shape[0])

  def _stored(self, picture: Image.Image) -> np.ndarray:
    """A face crop at the stored shape."""
    return decode.to_stored(picture, self.predictor.preprocess.shape)

  def classify(self, crops: list[np.ndarray]) -> list[Prediction]:
    """Predictions of uint8 images already at the stored shape, batched on the device."""
    if not crops:
      return []
    probabilities, logits = self.predictor(crops)
    return [Prediction(self.class_names[int(np.argmax(p))], float(np.max(p)),
                       dict(zip(self.class_names, map(float, p))), dict(zip(self.class_names, map(float, z))))
            for p, z in zip(probabilities, logits)]

  def predict(self, images_or_paths, min_face_size: float = MIN_FACE_SIZE) -> list[Prediction | None]:
    """One entry per face crop (a path, an open binary file, a PIL image, or a uint8 grey, RGB or RGBA array of any
    size) of a list, or of a stacked array ([count, height, width(, channels)]), in order: its Prediction, or None
    for a crop whose shorter side is below `min_face_size` px, not classified (as `detect_and_predict` returns such
    faces; one warning a call names them; min_face_size=0 classifies every crop); a warning for images not shaped
    like face crops (photos: `detect_and_predict`). An image that cannot be read raises
    `decode.UnreadableImageError` naming its path or place, before anything is classified."""
    _refuse_encoded_bytes(images_or_paths)
    if _is_one_image(images_or_paths):
      raise TypeError("Model.predict takes a list of face crops (paths, open files, PIL images or arrays) or a stack "
                      "[count, height, width(, channels)]: wrap the one image in a list.")
    check_limits(min_face_size)
    _warn_if_channels_first(images_or_paths)
    crops, too_small, not_crops = [], [], []
    for index, image in enumerate(images_or_paths):
      name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"
      with _as_picture(image, name) as picture:
        if reason := size_reason(min(picture.size), min_face_size):
          crops.append(None)
          too_small.append(f"{name}, {reason}")
          continue
        crops.append(self._stored(picture))
        if not self.is_face_crop(*picture.size):
          not_crops.append(f"{name}, {picture.width}×{picture.height}")
    if too_small:
      logging.warning("Model.predict: %d of %d images (the first: %s) are not classified, their entries None; pass "
                      "larger crops, or min_face_size=0 to classify them.", len(too_small), len(crops), too_small[0])
    if not_crops:
      self._warn_not_crops(not_crops, len(crops))
    predictions = iter(self.classify([crop for crop in crops if crop is not None]))
    return [None if crop is None else next(predictions) for crop in crops]

  def _warn_not_crops(self, not_crops: list[str], count: int) -> None:
    """Photos given to `predict` are classified whole, as one face: said once per call, as the command line
    would have searched them for faces."""
    limit = inference.face_crop_limit(self.predictor.preprocess.shape[0])
    logging.warning("Model.predict: %d of %d images (the first: %s) are not shaped like face crops (nearly square, "
                    "at most %d px a side); each is classified whole, as one face. For the faces in photos, call "
                    "detect_and_predict.", len(not_crops), count, not_crops[0], limit)

  def faces(self, photo, min_face_size: float = MIN_FACE_SIZE, min_score: float = MIN_SCORE, max_side: int = 0):
    """(detected faces, their aligned crops or None when skipped, the reasons) of one photo; with `max_side`, the
    faces are searched for in a copy whose longer side is `max_side` where the photo's is longer (`_detected`)."""
    check_limits(min_face_size, min_score, max_side)
    if isinstance(photo, (list, tuple)):
      raise TypeError("One photo is taken (a path, an open binary file, a PIL image or an array), not a "
                      f"{type(photo).__name__}: call it once for each photo.")
    with _as_picture(photo, "the photo") as picture:
      image = decode.rgb(picture)
    found = self._detected(image, min_face_size, max_side)
    reasons = [skip_reason(face, min_face_size, min_score) for face in found]
    crops = [None if reason else align.aligned(image, face, self.alignment, self.predictor.preprocess.shape)
             for face, reason in zip(found, reasons)]
    return found, crops, reasons

  def _detected(self, image: np.ndarray, min_face_size: float, max_side: int) -> list:
    """The detector's faces in `image`, in its pixels. Where `max_side` is set and the image's longer side is longer,
    they are searched for in a copy reduced to it (PIL's bilinear resize): a large photo's pyramid is that much
    smaller (a 6000×4000 photo's 16 levels, 12 at 1600 px), but faces under the detector's 12 px there are not found."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
      return self.detector_for(min_face_size)(image)
    scale = max_side / max(height, width)
    small = Image.fromarray(image).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                          Image.BILINEAR)
    x_scale, y_scale = width / small.width, height / small.height
    return [face.scaled(x_scale, y_scale) for face in self.detector_for(min_face_size / x_scale)(np.asarray(small))]

  def detect_and_predict(self, photo, min_face_size: float = MIN_FACE_SIZE, min_score: float = MIN_SCORE,
                         max_side: int = 0) -> list[FaceResult]:
    """Every face the detector finds in a photo (a path, an open binary file, a PIL image or a uint8 grey, RGB or
    RGBA array), left to right, its box and landmarks in the upright photo's pixels (EXIF orientation applied); faces
    smaller than `min_face_size` pixels or scored below `min_score` are returned unclassified, with the reason.
    `max_side` (pixels, 0: off) searches a large photo reduced to that longer side (`_detected`): faster, the
    faces aligned from the full photo, but those under 12 px in the reduced copy not found."""
    found, crops, reasons = self.faces(photo, min_face_size, min_score, max_side)
    predictions = iter(self.classify([crop for crop in crops if crop is not None]))
    return [FaceResult(i, face.box, face.landmarks, face.score, None if reason else next(predictions), reason)
            for i, (face, reason) in enumerate(zip(found, reasons))]


def _as_picture(image, name: str):
  """A context giving an image as PIL's, upright: a path opened (`_opened`), an open binary file decoded as a file
  is, a PIL image turned by its EXIF orientation as a file's would be (`decode.upright`), an array as `as_rgb`
  takes it. What cannot be taken, or decoded, raises naming the path, or else `name` (its place in the call)."""
  if isinstance(image, (str, os.PathLike)):
    return _opened(os.fspath(image))
  if hasattr(image, "read"):
    if getattr(image, "closed", False) or isinstance(image, io.TextIOBase):
      raise UserError(f"{name} is {'a closed file' if image.closed else 'a file opened as text'}: pass it open, in "
                      "binary mode (open(path, 'rb'), io.BytesIO(data)).")
    return decode.opened(image, name)
  if isinstance(image, Image.Image):
    return decode.upright(image, name)
  _refuse_encoded_bytes(image)
  try:
    return contextlib.nullcontext(Image.fromarray(as_rgb(image)))
  except UserError as error:
    raise UserError(f"{name}: {error}") from None


def _refuse_encoded_bytes(image) -> None:
  """A file's bytes (read from a request, a database) would be taken for an array of numbers."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    raise UserError("Encoded image bytes are no image here: pass the file's path, or them as a file, "
                    "io.BytesIO(data).")


@contextlib.contextmanager
def _opened(path: str):
  """`decode.opened`, but a file that is no image and is named as a video is refused as a video, with the ways to
  read one."""
  try:
    with decode.opened(path) as picture:
      yield picture
  except decode.UnreadableImageError as error:
    if isinstance(error.__cause__, UnidentifiedImageError) and video.is_video(path):
      raise UserError(f"{path} is a video: Model.predict and detect_and_predict read images. Pass its frames "
                      "(fer_jax.data.video.frames reads them) to detect_and_predict, or run `python -m "
                      f"fer_jax.predict --input={path}` (with --config, --checkpoint and --output), which follows "
                      "its faces from frame to frame.") from None
    raise


def _is_one_image(images) -> bool:
  """A path, a PIL image, or an array of one image ([height, width] or [height, width, 1–4 channels]), where a
  list of them or a stack [count, height, width(, channels)] belongs. [count, 48, 48] is a stack of grey faces."""
  if isinstance(images, (str, os.PathLike, Image.Image)) or hasattr(images, "read"):
    return True
  shape = getattr(images, "shape", None)
  return shape is not None and (len(shape) < 3 or (len(shape) == 3 and shape[-1] <= 4))


def _warn_if_channels_first(images) -> None:
  """A stack [3 or 4, height, width] is of grey faces, as [count, 48, 48] is; it may be one image with its channels
  first (PyTorch's order), which would be classified as 3 or 4 faces without a word."""
  shape = getattr(images, "shape", ())
  if len(shape) == 3 and shape[0] in (3, 4) and min(shape[1:]) > 4:
    logging.warning("Model.predict reads the array %s as a stack of %d grey faces of %d×%d; if it is one image with "
                    "its channels first (PyTorch's order), pass [np.moveaxis(image, 0, -1)].", tuple(shape), shape[0],
                    shape[2], shape[1])


def size_reason(size: float, min_face_size: float) -> str:
  """Why a face whose shorter side (a detected box's, or a crop's) is `size` px is not classified, or ""."""
  return f"face smaller than the minimum size ({size:.0f} < {min_face_size:g} px)" if size < min_face_size else ""


def skip_reason(face: detector.Face, min_face_size: float, min_score: float) -> str:
  if reason := size_reason(face.size, min_face_size):
    return reason
  if face.score < min_score:
    return f"detection score below the minimum ({face.score:.3f} < {min_score:g})"
  return ""
