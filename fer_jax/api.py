"""The Python API: a trained, converted or exported model as an object that classifies faces.

  import fer_jax
  model = fer_jax.load("workdirs/dan_rafdb", config="configs/dan.py:rafdb")
  for face in model.detect_and_predict("group.jpg"):
    print(face.index, face.box, face.prediction.label if face.prediction else face.skipped)
  model.predict(["crop1.png", crop_array])  # face crops: one Prediction each

`load` accepts a training workdir (its newest checkpoint), a checkpoints/ or step folder, the
output of `python -m fer_jax.convert`, or a `python -m fer_jax.export` folder (run through its
StableHLO program, no model code). Without `config`, a checkpoint's meta record (an export's
model.json) gives the model, its input, its class order, the data set (its stored image size and
alignment, `fer_jax.face.align`) and the test-time augmentation. A `config` is checked against an
export's record as against a checkpoint's, and gives the test-time augmentation and what records
written before 2026-12-03 lack (the data set). With a config or without, the record gives the shape
a trained model's images were decoded to (a converted model's, and older records', go by the config).
`python -m fer_jax.predict` is a command line over this API.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import export
from fer_jax import inference
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import validation
from fer_jax.data import decode
from fer_jax.data import labels
from fer_jax.errors import UserError
from fer_jax.face import align
from fer_jax.face import detector

# A photo is taken for a face crop when it is nearly square (sides within this ratio) and no
# larger than CROP_MAX_SIDE_FACTOR × the side the model decodes to (at least CROP_MIN_LIMIT px).
CROP_ASPECT = 1.25
CROP_MAX_SIDE_FACTOR, CROP_MIN_LIMIT = 2, 128
MIN_FACE_SIZE, MIN_SCORE = 24.0, 0.9


@dataclasses.dataclass(frozen=True)
class Prediction:
  label: str
  confidence: float
  probabilities: dict[str, float]
  logits: dict[str, float]


@dataclasses.dataclass(frozen=True)
class FaceResult:
  index: int                     # left to right in the photo
  box: tuple[float, float, float, float]
  landmarks: tuple[tuple[float, float], ...]
  score: float                   # the detector's face probability
  prediction: Prediction | None  # None when skipped
  skipped: str = ""              # why the face was not classified ("" if it was)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """"configs/dan.py:rafdb" (a path, then the argument) as `--config` reads it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"config {spec!r}: {path} is not a file; pass configs/<method>.py:<dataset>.")
  module = config_lib.config_module(path)
  return module.get_config(arg) if arg else module.get_config()


def _class_order(names) -> str:
  for order, order_names in labels.CLASS_ORDERS.items():
    if tuple(order_names) == tuple(names):
      return order
  raise UserError(f"The model's classes ({', '.join(names)}) are in no order of fer_jax.data.labels.CLASS_ORDERS: "
                  "pass its config to fer_jax.load(path, config=...).")


def _config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """A checkpoint's or export's config from its meta record (`checkpointing.metadata`): the model, its input
  and class names; the data set (absent from records written before 2026-12-03) gives the crop style and
  stored size it was trained on, "tta" (absent before 2026-12-05: none) the test-time augmentation. The
  shape its images were decoded to is no config key: `checkpointing.recorded_shape` reads it."""
  config = config_lib.base_config()
  config.model.update(meta["model"])
  config.input.update(meta["input"])
  dataset = meta.get("dataset") or {}
  config.dataset.update({key: value for key, value in dataset.items() if key in config.dataset})
  config.dataset.class_order = _class_order(meta["class_names"])
  config.eval.tta = meta.get("tta", "none")
  return config


def _load_export(path: str, config, tta_name: str, batch_size: int) -> inference.Predictor:
  """The export's own record gives the model and its inputs; a `config` is checked against it as for a
  checkpoint, gives the test-time augmentation and fills what older exports did not record."""
  info = export.read_metadata(path)
  meta = export.meta_record(info)
  if config is not None:
    validation.validate(config, training=False)
    checkpointing.check_identity(meta, f"The export {path}", config.model,
                                 labels.class_names(config.dataset.class_order), config.input)
    meta = {"dataset": checkpointing.dataset_record(config), **meta, "tta": config.eval.tta}
  config = _config_from_meta(meta)
  exported = export.read_program(path)
  variables = export.read_variables(path)
  fixed_batch = info["batch_size"] if isinstance(info["batch_size"], int) else 0

  def logits(variables, images):
    if not fixed_batch:
      return exported.call(variables, images)["logits"]
    padding = [(0, fixed_batch - images.shape[0])] + [(0, 0)] * (images.ndim - 1)  # the program's one batch size
    return exported.call(variables, jnp.pad(images, padding))["logits"][:images.shape[0]]

  # A fixed-batch program takes the whole batch: it runs on one device, in steps of at most its batch (padded to it).
  mesh = mesh_lib.make_mesh(jax.local_devices()[:1]) if fixed_batch else None
  return inference.Predictor(config, variables, tta_name or config.eval.tta, fixed_batch or batch_size,
                             logits_fn=logits, mesh=mesh, stored_shape=checkpointing.recorded_shape(meta))


def _load_checkpoint(path: str, config, tta_name: str, batch_size: int) -> inference.Predictor:
  meta = checkpointing.read_meta(path)
  if config is None:
    if "model" not in meta:
      raise UserError(f"The checkpoint at {path} has no meta record: pass its config to fer_jax.load(path, config=...).")
    config = _config_from_meta(meta)
  validation.validate(config, training=False)
  variables = models.load_trained_variables(config, models.build_model(config), path)
  return inference.Predictor(config, variables, tta_name or config.eval.tta, batch_size,
                             stored_shape=checkpointing.recorded_shape(meta))


def load(path: str, config=None, tta: str = "", batch_size: int = 64) -> "Model":
  """The model at `path`; `config` a ConfigDict or "configs/<method>.py:<dataset>"."""
  path = os.path.expanduser(path)
  if isinstance(config, str):
    config = load_config(config)
  if export.is_export(path):
    return Model(_load_export(path, config, tta, batch_size))
  if export.is_onnx_export(path):
    raise UserError(f"{path} is an ONNX export: run it in ONNX Runtime (its model.json says how); fer_jax.load and "
                    "predict read the default export (`python -m fer_jax.export` without --format=onnx).")
  return Model(_load_checkpoint(path, config, tta, batch_size))


def _as_rgb(photo) -> np.ndarray:
  image = decode.read_photo(photo) if isinstance(photo, (str, os.PathLike)) else np.asarray(photo)
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise UserError(f"A photo must be a path or a uint8 array [height, width(, channels)], got {image.dtype} "
                    f"{image.shape}.")
  return np.repeat(image.reshape(*image.shape[:2], -1), 3, axis=-1) if image.ndim == 2 or image.shape[-1] == 1 else image


class Model:
  """Classifies face crops (`predict`) and the faces of photos (`detect_and_predict`)."""

  def __init__(self, predictor: inference.Predictor):
    self.predictor = predictor
    self.config = predictor.config
    self.class_names = predictor.class_names
    self.alignment = align.alignment_for(self.config)

  @functools.cached_property
  def detector(self) -> detector.Detector:
    return detector.Detector()

  def is_face_crop(self, width: int, height: int) -> bool:
    limit = max(CROP_MAX_SIDE_FACTOR * self.predictor.preprocess.shape[0], CROP_MIN_LIMIT)
    return max(width, height) <= min(width, height) * CROP_ASPECT and max(width, height) <= limit

  def _stored(self, image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
      return self.predictor.preprocess.read(str(image))
    return decode.to_stored(Image.fromarray(np.asarray(image).squeeze()), self.predictor.preprocess.shape)

  def classify(self, crops: list[np.ndarray]) -> list[Prediction]:
    """Predictions of uint8 images already at the stored shape, batched on the device."""
    if not crops:
      return []
    probabilities, logits = self.predictor(crops)
    return [Prediction(self.class_names[int(np.argmax(p))], float(np.max(p)), dict(zip(self.class_names, map(float, p))),
                       dict(zip(self.class_names, map(float, z)))) for p, z in zip(probabilities, logits)]

  def predict(self, images_or_paths) -> list[Prediction]:
    """One Prediction per face crop (a path, or an RGB/grey uint8 array of any size) of a list (or of
    a stacked array)."""
    if isinstance(images_or_paths, (str, os.PathLike)):
      raise TypeError("Model.predict takes a list of face crops (paths or arrays): wrap the one path in a list.")
    return self.classify([self._stored(image) for image in images_or_paths])

  def faces(self, photo, min_face_size: float = MIN_FACE_SIZE, min_score: float = MIN_SCORE):
    """(detected faces, their aligned crops or None when skipped, the reasons) of one photo."""
    image = _as_rgb(photo)
    found = self.detector(image)
    reasons = [skip_reason(face, min_face_size, min_score) for face in found]
    crops = [None if reason else align.aligned(image, face, self.alignment, self.predictor.preprocess.shape)
             for face, reason in zip(found, reasons)]
    return found, crops, reasons

  def detect_and_predict(self, photo, min_face_size: float = MIN_FACE_SIZE, min_score: float = MIN_SCORE
                         ) -> list[FaceResult]:
    """Every face the detector finds in a photo (path or RGB uint8 array), left to right; faces
    smaller than `min_face_size` pixels or scored below `min_score` are returned unclassified, with the reason."""
    found, crops, reasons = self.faces(photo, min_face_size, min_score)
    predictions = iter(self.classify([crop for crop in crops if crop is not None]))
    return [FaceResult(i, face.box, face.landmarks, face.score, None if reason else next(predictions), reason)
            for i, (face, reason) in enumerate(zip(found, reasons))]


def skip_reason(face: detector.Face, min_face_size: float, min_score: float) -> str:
  if face.size < min_face_size:
    return f"face smaller than the minimum size ({face.size:.0f} < {min_face_size:g} px)"
  if face.score < min_score:
    return f"detection score below the minimum ({face.score:.3f} < {min_score:g})"
  return ""
