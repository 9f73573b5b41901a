"""Exports a checkpoint as parameters plus a serialized StableHLO program, runnable without fer_jax
(or, with --format=onnx, as one ONNX file).

  python -m fer_jax.export --config=configs/dan.py:rafdb --checkpoint=DIR --out=exported/dan_rafdb

writes
  OUT/variables/      Orbax (StandardCheckpointer) tree {params, batch_stats}: no optimizer state
  OUT/model.stablehlo `jax.export` serialization of
                        infer(variables, images float32 [B, H, W, C]) → {"logits", "probabilities"}
                      with a symbolic batch size B (fixed with --batch_size=N), lowered for the
                      platforms in --platforms (default cpu and cuda)
  OUT/model.json      class names, the model's config (config.model, its dtype as it resolved
                      here: the program computes in it on every platform), input size and
                      channels, the preprocessing to apply first (config.input.eval_pp; in plain
                      terms under "expected_input": decoding, pipeline, normalisation numbers), the
                      data set (name, stored size; the shape a trained model's images were decoded
                      to), the test-time augmentation (not in the program: "tta_included" false),
                      the compute dtype, batch size and platforms
Reload with JAX and Orbax only (no model code):
  exported = jax.export.deserialize(open("OUT/model.stablehlo", "rb").read())
  variables = orbax.checkpoint.StandardCheckpointer().restore(os.path.abspath("OUT/variables"))  # absolute only
  outputs = exported.call(variables, images)
The images must already be preprocessed as model.json's "expected_input" says (decode, resize, then
normalise; PIL/cv2 resizing happens outside the program).

--format=onnx (needs the `onnx` extra: pip install 'fer_jax[onnx]') writes instead
  OUT/model.onnx      the same inference function, weights embedded (opset 18, IR version 8), input "images"
                      float32 [batch, H, W, C], outputs "logits" and "probabilities"; batch is a
                      dynamic dimension unless --batch_size=N (fer_jax.onnx_export translates it);
                      it computes in float32: config.model.dtype "auto" exports as float32 wherever
                      it runs, any other dtype is refused
                      model.json's keys are in its metadata_props (each value JSON text) and its doc
                      strings name each output index's class, for the file copied alone
  OUT/model.json      as above, without platforms (--platforms is refused: the file runs wherever
                      ONNX Runtime does); with --verify_images=A.jpg,B.png also the worst relative
                      logit difference between ONNX Runtime and JAX on those images (any number of them)
Run with ONNX Runtime: onnxruntime.InferenceSession("OUT/model.onnx").run(None, {"images": images}).

The export is written into OUT.export-partial, next to OUT, and moved into OUT once complete: SIGINT or SIGTERM
stops it with exit status 75 and nothing written (the same command exports again).
"""

from collections.abc import Sequence
import importlib
import json
import os
import shlex
import shutil
import sys
import sysconfig

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import errors
from fer_jax import inference
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import onnx_export
from fer_jax import provenance
from fer_jax import stopping
from fer_jax import validation
from fer_jax.data import augment
from fer_jax.data import decode
from fer_jax.data import labels
from fer_jax.data.augment import basic
from fer_jax.errors import UserError

STABLEHLO = "model.stablehlo"
ONNX = "model.onnx"
VARIABLES = "variables"
METADATA = "model.json"
FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # as jax.export names them
FIELDS = ("method", "class_names", "input", "preprocessing", "batch_size")  # what reading model.json needs
OUTPUTS = ("logits", "probabilities")  # the inference function's outputs, in pytree order
PARTIAL = ".export-partial"  # OUT + PARTIAL: where an export is written before it is moved into OUT
ORBAX_PARTIAL = VARIABLES + checkpointing.UNFINISHED_SAVE  # what an interrupted Orbax save leaves (the name's start)


def inference_function(config):
  model = models.build_model(config)

  def infer(variables, images):
    logits = model.apply(variables, images, train=False)["logits"].astype(jnp.float32)
    return {"logits": logits, "probabilities": jax.nn.softmax(logits, axis=-1)}

  return infer


def abstract_images(config, batch_size: int | None) -> jax.ShapeDtypeStruct:
  """float32 [batch, size, size, channels]; batch is the symbolic dimension "batch" unless given."""
  size, channels = config.input.size, config.input.channels
  batch = jax.export.symbolic_shape("batch")[0] if batch_size is None else batch_size
  return jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)


def export_inference(config, variables: dict, batch_size: int | None = None,
                     platforms=("cpu", "cuda")) -> jax.export.Exported:
  """The model's inference function lowered for `platforms`; batch symbolic unless `batch_size`."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  return jax.export.export(jax.jit(inference_function(config)), platforms=platforms)(
      abstract, abstract_images(config, batch_size))


def onnx_config(config):
  """The config an ONNX export traces: config.model.dtype "auto" becomes float32, whatever it resolves to on this
  machine (bfloat16 on a GPU or TPU), as ONNX Runtime computes the file; an explicit other dtype than float32 is a
  UserError with the fix (the translator has no dtype conversions). Logs the dtype chosen for "auto". Called before
  `validation.validate`, which resolves "auto" to this machine's dtype (and names a dtype that is none)."""
  dtype = config.model.dtype
  if dtype == "float32" or dtype not in models.DTYPES:
    return config
  if dtype != "auto":
    raise UserError(f"--format=onnx exports a float32 program, but --config.model.dtype={dtype} asks for {dtype} "
                    "computation: pass --config.model.dtype=float32 (or leave it auto), or export with "
                    f"--format=stablehlo, which computes in {dtype}.")
  resolved = models.compute_dtype(dtype)
  config = config.copy_and_resolve_references()
  config.model.dtype = "float32"
  if resolved == "float32":
    logging.info("ONNX export computes in float32 (config.model.dtype='auto'; model.json's compute_dtype).")
  else:
    logging.info("ONNX export computes in float32, not the %s that config.model.dtype='auto' resolves to on this %s "
                 "backend: ONNX Runtime runs the file in float32 (model.json's compute_dtype).", resolved,
                 jax.default_backend())
  return config


def export_onnx(config, variables: dict, batch_size: int | None = None):
  """The model's inference function with `variables` embedded, as an ONNX ModelProto (`config`: `onnx_config`'s)."""
  infer = inference_function(config)
  return onnx_export.to_onnx(lambda images: infer(variables, images), abstract_images(config, batch_size),
                             OUTPUTS, name=config.model.name)


def _onnxruntime():
  try:
    import onnxruntime
  except ImportError as error:
    raise UserError(f"--verify_images needs onnxruntime ({error}): pip install 'fer_jax[onnx]'.") from None
  return onnxruntime


def check_verify_images(paths: Sequence[str]) -> None:
  """--verify_images before the checkpoint is read: ONNX Runtime importable and each file an image
  (`decode.UnreadableImageError`, naming the file and the fix, otherwise)."""
  if paths:
    _onnxruntime()
  for path in paths or ():
    with decode.opened(path):
      pass


def onnx_parity(config, variables: dict, serialized: bytes, paths: list[str], batch_size: int | None,
                stored_shape: Sequence[int]) -> dict:
  """ONNX Runtime against JAX on the image files (after the eval preprocessing, decoded at `stored_shape`, as
  `inference.FilePreprocessor`): the largest absolute logit difference divided by the largest absolute JAX logit
  (by float32's smallest normal number where every logit is 0, as a zero-initialised head's are).
  A file of a fixed `batch_size` runs them in batches of it, the last padded with zeros."""
  onnxruntime = _onnxruntime()
  preprocess = inference.FilePreprocessor(config, stored_shape)
  images = np.asarray(jax.jit(preprocess)(np.stack([preprocess.read(path) for path in paths])))
  expected = np.asarray(jax.jit(inference_function(config))(variables, images)["logits"])
  options = onnxruntime.SessionOptions()
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning crawls on a busy CPU
  session = onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
  actual = inference.forward_in_batches(lambda _, batch: session.run(["logits"], {"images": batch})[0], None,
                                        list(images), batch_size or len(images))
  scale = max(float(np.max(np.abs(expected))), float(np.finfo(np.float32).tiny))  # all zero: an untrained APViT's head
  return {"images": len(paths), "worst_relative_logit_error": float(np.max(np.abs(actual - expected))) / scale}


def is_export(path: str) -> bool:
  """Whether `path` is a StableHLO export folder (model.json, model.stablehlo, variables/)."""
  return all(os.path.exists(os.path.join(path, name)) for name in (METADATA, STABLEHLO, VARIABLES))


def is_onnx_export(path: str) -> bool:
  return os.path.exists(os.path.join(path, ONNX))


def _damaged(path: str):
  """Any failure to read the export file `path` as a CheckpointError naming it, with the fix."""
  return checkpointing.read_errors(path, "export the model again (`python -m fer_jax.export`)")


def read_metadata(path: str) -> dict:
  """An export folder's model.json."""
  file = os.path.join(path, METADATA)
  with _damaged(file):
    with open(file) as f:
      info = json.load(f)
    missing = [key for key in FIELDS if not isinstance(info, dict) or key not in info]
    if missing:
      raise ValueError(f"no {', '.join(missing)}")
    batch_size = info["batch_size"]
    if batch_size != "symbolic" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
      raise ValueError(f"batch_size={json.dumps(batch_size)} is neither \"symbolic\" nor a whole number from 1")
    meta_record(info)  # its fields of the wrong type or without their keys (input.height) fail here, named
  return info


def fixed_batch_size(path: str, info: dict, exported: jax.export.Exported) -> int:
  """The one batch size the program of the export folder at `path` takes (0: any), which its model.json (`info`)
  must name: a CheckpointError where the two were edited or copied apart."""
  batch = exported.in_avals[-1].shape[0]
  program = batch if isinstance(batch, int) else "symbolic"
  if info["batch_size"] != program:
    raise checkpointing.CheckpointError(
        f"{os.path.join(path, METADATA)} says batch_size={json.dumps(info['batch_size'])} but its {STABLEHLO} takes "
        f"batch_size={json.dumps(program)}: they do not match (one edited, or copied from another export); export "
        "the model again (`python -m fer_jax.export`).")
  return batch if isinstance(batch, int) else 0


def meta_record(info: dict) -> dict:
  """model.json in the terms of a checkpoint's meta record (`checkpointing.metadata`): its config.model ("model",
  not recorded before 2026-12-05: then only the method, the class count and the dtype, which rebuild a method's
  default architecture only)."""
  if isinstance(info.get("model"), dict):
    model = {**info["model"], "dtype": info.get("compute_dtype", info["model"].get("dtype", "auto"))}
  else:
    model = {"name": info["method"], "num_classes": len(info["class_names"]),
             "dtype": info.get("compute_dtype", "auto")}  # not recorded before 2026-12-05: unknown
  return {"model": model,
          "class_names": info["class_names"],
          "input": {"size": info["input"]["height"], "channels": info["input"]["channels"],
                    "eval_pp": info["preprocessing"]},
          **{key: info[key] for key in ("dataset", "tta") if key in info}}


def read_record(path: str) -> dict:
  """The meta record of the export folder (its model.json in those terms) or the checkpoint (`checkpointing.read_meta`:
  {} if it has none) at `path`."""
  return meta_record(read_metadata(path)) if is_export(path) else checkpointing.read_meta(path)


def read_stored_shape(path: str) -> tuple[int, ...]:
  """The (height, width, channels) the training of the model at `path` decoded its images to, as its meta record
  says; () where it does not (`checkpointing.recorded_shape`)."""
  return checkpointing.recorded_shape(read_record(path))


def config_from_record(record: dict, source: str, fix: str):
  """The config a meta record (`read_record`'s) rebuilds; a UserError naming `source` ("--checkpoint=PATH") and the
  `fix` (how to pass a config instead) where there is no record."""
  if "model" not in record:
    raise UserError(f"{source} has no meta record to rebuild its config from: {fix}.")
  return checkpointing.config_from_meta(record)


def check_export_identity(path: str, record: dict, config) -> None:
  """The export folder at `path`, whose meta record is `record`, must hold the model `config` builds (method,
  classes, input), as a checkpoint must."""
  checkpointing.check_identity(record, f"The export {path}", config.model,
                               labels.class_names(config.dataset.class_order), config.input)


def read_program(path: str) -> jax.export.Exported:
  """An export folder's program, which must be lowered for this machine's platform."""
  file = os.path.join(path, STABLEHLO)
  with _damaged(file):
    with open(file, "rb") as f:
      exported = jax.export.deserialize(f.read())
  platform = jax.export.default_export_platform()
  if platform not in exported.platforms:
    platforms = ",".join([*exported.platforms, platform])
    raise UserError(f"{file} was exported for {', '.join(exported.platforms)} only, not for this machine's {platform}: "
                    f"export the model again with --platforms={platforms}.")
  return exported


def read_variables(path: str, exported: jax.export.Exported | None = None) -> dict:
  """An export folder's {params, batch_stats}; with its program, checked to be the variables the program takes."""
  folder = os.path.join(os.path.abspath(path), VARIABLES)
  with _damaged(folder):
    variables = ocp.StandardCheckpointer().restore(folder)
  if exported is not None:
    check_variables_fit(folder, exported, variables)
  return variables


def check_variables_fit(folder: str, exported: jax.export.Exported, variables: dict) -> None:
  """The variables read from `folder` must be the program's first argument (their names, shapes and dtypes): else
  the first prediction failed inside JAX with a traceback."""
  got, want = _leaf_types(variables), _leaf_types(jax.tree.unflatten(exported.in_tree, exported.in_avals)[0][0])
  if got != want:
    differing = sorted(key for key in got.keys() | want.keys() if got.get(key) != want.get(key))
    shown = errors.first([f"{key}: {got.get(key, 'absent')}, the program takes {want.get(key, 'absent')}"
                          for key in differing], 3, "; ")
    raise checkpointing.CheckpointError(
        f"{folder} does not hold the variables {STABLEHLO} takes ({shown}): the export folder mixes two exports. "
        "Export the model again (`python -m fer_jax.export`).")


def _leaf_types(tree) -> dict[str, str]:
  """Each leaf's "float32[512, 7]", by path."""
  return {jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype)}{list(np.shape(leaf))}"
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _values(text: str, decoded: tuple[int, int, int]) -> dict:
  """What the values entering the model are, by the pipeline `text` (run on images of shape `decoded`):
  normalize's mean and std for the channels it sees, else the 0–255 range."""
  try:
    steps = augment.parse(text).steps
  except ValueError:  # not a pipeline (a config not validated): nothing more to say
    return {"values": f"as the pipeline {text} leaves them (fer_jax.data.augment)"}
  values, shape = {"values": "0 to 255, not normalised"}, tuple(decoded)
  for step in steps:
    if step.name == "normalize":
      mean, std = step.arguments["mean"], step.arguments["std"]
      if isinstance(mean, str):
        mean, std = basic.NORMALIZATIONS[mean]
      channels = shape[-1]
      values = {"values": "(value / 255 - mean) / std, per channel",
                "normalize": {"mean": [float(m) for m in mean][:channels], "std": [float(d) for d in std][:channels]}}
    shape = step.op.output_shape(shape)
  return values


def decoded_shape(config, stored_shape: Sequence[int] = ()) -> tuple[int, int, int]:
  """The (height, width, channels) an image file is decoded to before the eval pipeline, as
  `inference.FilePreprocessor` decodes it: `stored_shape`, else dataset.image_size (else the input size) and the
  data set's channels."""
  side = config.dataset.image_size or config.input.size
  return tuple(stored_shape) or (side, side, decode.stored_channels(config.dataset.name))


def expected_input(config, batch_size: int | None, stored_shape: Sequence[int] = ()) -> dict:
  """What the program expects, in terms that need no fer_jax: the array, how an image file becomes one (decoding
  as `inference.FilePreprocessor` does, then the eval pipeline) and the numbers of its normalisation."""
  height, width, channels = decoded_shape(config, stored_shape)
  pipeline = augment.with_size(config.input.eval_pp, config.input.size)
  size = config.input.size
  return {
      "shape": ["batch" if batch_size is None else batch_size, size, size, config.input.channels],
      "layout": "NHWC", "dtype": "float32",
      "decode": {"height": height, "width": width, "channels": channels,
                 "how": f"each image file upright (its EXIF orientation applied), as 8-bit "
                        f"{'RGB' if channels == 3 else 'grey (PIL mode L)'}, resized to {width}x{height} with PIL's "
                        "Image.BILINEAR where its size differs (a trained model's stored shape, else "
                        "dataset.image_size, else the input size)"},
      "then": pipeline,  # the eval pipeline (config.input.eval_pp), on the decoded 0-255 values
      "ops": "fer_jax.data.augment's, in order: resize(size) is PIL's Image.resize (bilinear unless a method is "
             "named, antialiased when shrinking), resize(size, 'cv2_bilinear') cv2.resize INTER_LINEAR, each "
             "within one grey level of those libraries (fer_jax.load(path).predict preprocesses exactly); "
             "gray_to_rgb() copies one channel to three; before to_float()/normalize() every op's result is "
             "rounded to 0-255 integers",
      **_values(pipeline, (height, width, channels)),
  }


def model_record(config) -> dict:
  """config.model, with its dtype as it resolved here ("auto": by this machine's backend): the program computes
  in it, and `meta_record` rebuilds the model (any architecture option) from it. As model.json reads back: lists
  where the config holds tuples."""
  return json.loads(json.dumps({**config.model.to_dict(), "dtype": models.compute_dtype(config.model.dtype)}))


def metadata(config, batch_size: int | None, format_fields: dict, stored_shape: Sequence[int] = ()) -> dict:
  """model.json; `stored_shape`: what the checkpoint's training decoded its images to, as its meta record says."""
  return {
      "method": config.model.name,
      "model": model_record(config),
      "class_names": list(labels.class_names(config.dataset.class_order)),
      "input": {"height": config.input.size, "width": config.input.size, "channels": config.input.channels,
                "dtype": "float32", "layout": "NHWC"},
      "compute_dtype": models.compute_dtype(config.model.dtype),  # "auto" as it resolved where exported
      "preprocessing": augment.with_size(config.input.eval_pp, config.input.size),
      "expected_input": expected_input(config, batch_size, stored_shape),
      "tta": config.eval.tta,  # the views fer_jax.predict averages unless told otherwise (fer_jax.tta)
      "tta_included": False,  # not in the exported program: fer_jax.predict and fer_jax.load apply it around it
      "dataset": checkpointing.dataset_record(config, stored_shape),
      "batch_size": "symbolic" if batch_size is None else batch_size,
      "outputs": {"logits": "float32 [batch, classes]", "probabilities": "softmax of the logits"},
      **format_fields,
      "jax_version": jax.__version__,
  }


def write_onnx(config, variables: dict, out: str, batch_size: int | None, verify_images,
               stored_shape: Sequence[int]) -> dict:
  """OUT/model.onnx, checked against JAX on `verify_images` first and carrying its model.json (`describe_onnx`),
  which it returns."""
  model = export_onnx(config, variables, batch_size)
  fields = {"format": "onnx", "onnx_opset": onnx_export.OPSET}
  if verify_images:
    fields["onnx_runtime_vs_jax"] = onnx_parity(config, variables, model.SerializeToString(), list(verify_images),
                                                batch_size, stored_shape)
  info = metadata(config, batch_size, fields, stored_shape)
  describe_onnx(model, info)
  with open(os.path.join(out, ONNX), "wb") as f:
    f.write(model.SerializeToString())
  return info


def onnx_metadata(info: dict) -> dict[str, str]:
  """model.onnx's metadata_props: model.json's (`info`) keys, each value as JSON text (json.loads gives model.json's
  value back), and fer_jax_version where known."""
  props = {key: json.dumps(value) for key, value in info.items()}
  if version := provenance.software()["fer_jax"]:
    props["fer_jax_version"] = json.dumps(version)
  return props


def describe_onnx(model, info: dict) -> None:
  """Makes the ONNX ModelProto `model` say what its model.json (`info`) says, for the file copied alone: every key in
  metadata_props (`onnx_metadata`), and in doc strings which class each output index is and how images become the
  input; fer_jax's version as producer_version."""
  names = info["class_names"]
  classes = ", ".join(f"{index} {name}" for index, name in enumerate(names))
  shape = ", ".join(map(str, info["expected_input"]["shape"]))
  model.doc_string = (f"fer_jax {info['method']}: facial expression classification into {len(names)} classes. "
                      "metadata_props hold model.json's keys, each value JSON text.")
  model.graph.doc_string = f"logits[:, i] and probabilities[:, i] are class i of class_names: {classes}."
  docs = {"images": f"float32 [{shape}] {info['expected_input']['layout']}: each image {input_recipe(info)} "
                    "(metadata_props' expected_input).",
          "logits": f"float32 [batch, {len(names)}], unnormalised scores; index i is class_names[i]: {classes}.",
          "probabilities": f"float32 [batch, {len(names)}], the softmax of logits; index i is class_names[i]."}
  for value in [*model.graph.input, *model.graph.output]:
    value.doc_string = docs[value.name]
  for key, value in onnx_metadata(info).items():
    model.metadata_props.add(key=key, value=value)
  model.producer_version = provenance.software()["fer_jax"] or ""


def write_stablehlo(config, variables: dict, out: str, batch_size: int | None, platforms) -> dict:
  """OUT/variables and OUT/model.stablehlo; returns model.json's format fields."""
  exported = export_inference(config, variables, batch_size, tuple(platforms))
  checkpointer = ocp.StandardCheckpointer()
  with stopping.signals_held():
    try:
      checkpointer.save(os.path.join(out, VARIABLES), variables)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
  with open(os.path.join(out, STABLEHLO), "wb") as f:
    f.write(exported.serialize())
  return {"format": "stablehlo", "platforms": list(exported.platforms),
          "calling_convention_version": exported.calling_convention_version}


def _left_by_a_stopped_export(out: str, entries: list[str]) -> bool:
  """Whether the folder `out`'s `entries` are only what a stopped export left: an Orbax save interrupted inside it
  (exports before 2026-12-05 wrote into --out itself), or an export's files without model.json (moved last) beside
  OUT.export-partial (a move into an existing, empty --out killed at once). Otherwise (variables/, model.onnx) they
  may be a user's own files: kept."""
  if all(entry.startswith(ORBAX_PARTIAL) for entry in entries):
    return True
  return os.path.isdir(out + PARTIAL) and set(entries) <= {VARIABLES, STABLEHLO, ONNX}


def check_out(out: str) -> str:
  """--out as an absolute path, checked before any work: a new or empty folder in a writable place, or one holding only
  what a stopped export left (`_left_by_a_stopped_export`), which is removed."""
  out = os.path.abspath(os.path.expanduser(out))
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out={out} is a file: export into a new folder.")
  entries = os.listdir(out) if os.path.isdir(out) else []
  if entries and _left_by_a_stopped_export(out, entries):
    for entry in entries:
      path = os.path.join(out, entry)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
    logging.info("Removed the partial output of an interrupted export from %s.", out)
  elif entries:
    raise UserError(f"--out={out} is not empty (it holds {errors.first(sorted(entries), 3)}): export into a new "
                    "folder.")
  cli.check_writable_place(f"--out={out}", out)
  return out


def check_platforms(platforms: Sequence[str], export_format: str) -> tuple[str, ...]:
  """--platforms, each once, in order; one JAX does not export for is a UserError (for a StableHLO export)."""
  platforms = tuple(dict.fromkeys(platforms))
  if export_format != "stablehlo":
    return platforms
  if not platforms:
    raise UserError("--platforms is empty: pass the platforms to lower for, e.g. --platforms=cpu,cuda.")
  unknown = [platform for platform in platforms if platform not in PLATFORMS]
  if unknown:
    raise UserError(f"--platforms: {', '.join(unknown)} is not a platform JAX exports for ({', '.join(PLATFORMS)}; "
                    "a GPU is cuda or rocm): pass e.g. --platforms=cpu,cuda.")
  return platforms


def _move_into_place(partial: str, out: str) -> None:
  """The complete export in `partial` becomes `out` (its entries moved into `out` if that is an empty folder
  already, model.json last)."""
  if not os.path.isdir(out):
    os.rename(partial, out)
    return
  for name in sorted(os.listdir(partial), key=lambda name: name == METADATA):
    os.rename(os.path.join(partial, name), os.path.join(out, name))
  os.rmdir(partial)


def export(config, variables: dict, out: str, batch_size: int | None = None, platforms=("cpu", "cuda"),
           export_format: str = "stablehlo", verify_images=(), stored_shape: Sequence[int] = ()) -> dict:
  """Writes OUT/variables, OUT/model.stablehlo and OUT/model.json (or, for export_format "onnx",
  OUT/model.onnx and OUT/model.json, checked against JAX on `verify_images`; config.model.dtype as `onnx_config`
  makes it); returns the metadata. `stored_shape`: what the checkpoint's training decoded its images to, as its
  meta record says (`checkpointing.recorded_shape`). Written into OUT.export-partial and moved into OUT once
  complete: any exception (a stop signal's included) leaves nothing."""
  out = check_out(out)
  platforms = check_platforms(platforms, export_format)
  if verify_images and export_format != "onnx":
    raise UserError("--verify_images checks an ONNX export: add --format=onnx or drop it.")
  check_verify_images(verify_images)
  if export_format == "onnx":
    config = onnx_config(config)
  partial = out + PARTIAL
  if os.path.exists(partial):  # left by an export killed at once (SIGKILL, a second signal, a lost machine)
    shutil.rmtree(partial)
  os.makedirs(partial)
  try:
    if export_format == "onnx":
      info = write_onnx(config, variables, partial, batch_size, verify_images, stored_shape)
    else:
      info = metadata(config, batch_size, write_stablehlo(config, variables, partial, batch_size, platforms),
                      stored_shape)
    with open(os.path.join(partial, METADATA), "w") as f:
      json.dump(info, f, indent=2)
    _move_into_place(partial, out)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  return info


def check_not_an_export(checkpoint: str) -> None:
  """An export holds no checkpoint to export from (and an ONNX one no variables at all)."""
  if is_export(checkpoint) or is_onnx_export(checkpoint):
    raise UserError(not_a_checkpoint(f"--checkpoint={checkpoint}"))


def not_a_checkpoint(source: str) -> str:
  """The message for an export folder given (as `source`: "--checkpoint=PATH", or the path) where a checkpoint is
  read: model.json does not record which one it was exported from."""
  return (f"{source} is an export folder, not a checkpoint: pass the checkpoint it was exported from (a training "
          "workdir or a converted model). Exports are for deployment, not for training, evaluation or exporting "
          "again: `python -m fer_jax.predict` and `fer_jax.load` run a StableHLO export folder as it is.")


def exported_line(info: dict, out: str, config_arguments: list[str]) -> str:
  """What was exported (model.json `info`) to the folder `out`, and how to run it: `fer_jax.predict` with this
  command's --config arguments for a StableHLO export, ONNX Runtime for an ONNX one."""
  names, batch_size, image = info["class_names"], info["batch_size"], info["input"]
  symbolic = batch_size == "symbolic"
  what = (f"Exported {info['method']} ({len(names)} classes: {', '.join(names)}; "
          f"{'any batch size' if symbolic else f'batch size {batch_size}'})")
  if info["format"] == "onnx":
    shape = ", ".join(map(str, ("N" if symbolic else batch_size, image["height"], image["width"], image["channels"])))
    return (f"{what} as ONNX to {out}. Run it with ONNX Runtime: onnxruntime.InferenceSession("
            f"{json.dumps(os.path.join(out, ONNX))}).run(None, {{\"images\": images}}), images float32 [{shape}] "
            f"preprocessed as model.json's \"expected_input\" says: {input_recipe(info)}.")
  command = shlex.join([os.path.normpath(sys.executable), "-m", "fer_jax.predict", *absolute_config(config_arguments),
                        f"--checkpoint={out}", "--input=PHOTO", "--output=predictions.csv"])
  folder = method_folder(info["method"])
  if folder:  # a method of yours: importable from any folder with the one it was imported from on the path
    command = f"PYTHONPATH={shlex.quote(folder)}${{PYTHONPATH:+:$PYTHONPATH}} {command}"  # before the caller's own
  platforms = ", ".join(info["platforms"])
  where = "" if jax.export.default_export_platform() in info["platforms"] else f" on a machine with {platforms}"
  return f"{what} as StableHLO for {platforms} to {out}. Run it{where}: {command}"


def input_recipe(info: dict) -> str:
  """How an image file becomes the input, in a line, by model.json (`info`): "decoded to HxWxC, then PIPELINE (mean
  M, std S)"; the pipeline alone for an export before 2026-12-05, which has no expected_input."""
  how, expected = info["preprocessing"], info.get("expected_input")
  if expected:
    decoded = expected["decode"]
    how = f"decoded to {decoded['height']}x{decoded['width']}x{decoded['channels']}, then {how}"
    if "normalize" in expected:
      how += f" (mean {expected['normalize']['mean']}, std {expected['normalize']['std']})"
  return how


def method_folder(name: str) -> str | None:
  """For a method of yours (config.model.name a module path outside fer_jax, "my_methods.plain_resnet"), the folder
  its top-level package was imported from, which `exported_line`'s command puts on PYTHONPATH; None for fer_jax's
  own, and for one imported from site-packages (importable from any folder)."""
  top = name.split(".")[0]
  if name in models.METHODS or "." not in name or top == "fer_jax":
    return None
  module = sys.modules.get(top)
  if module is None:
    try:
      module = importlib.import_module(top)
    except ImportError:
      return None
  places = list(getattr(module, "__path__", None) or [])  # a package's folder (a namespace package has no __file__)
  if getattr(module, "__file__", None):
    places = [os.path.dirname(module.__file__)] if places else [module.__file__]
  if not places:
    return None
  folder = os.path.dirname(os.path.abspath(places[0]))
  installed = {os.path.abspath(path) for path in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
  return None if folder in installed else folder


def absolute_config(config_arguments: list[str]) -> list[str]:
  """`config_lib.config_arguments`' words with the --config file's path made absolute (its `:argument` kept), so
  that the command runs from any folder."""
  words = []
  for word in config_arguments:
    name, has_value, value = word.partition("=")
    if has_value and name == "--config":
      path, colon, argument = value.partition(":")
      word = f"--config={os.path.abspath(os.path.expanduser(path))}{colon}{argument}"
    words.append(word)
  return words


def tta_line(info: dict) -> str | None:
  """The log line for a config whose test-time augmentation (model.json's "tta") the exported program leaves out;
  None for "none"."""
  if info.get("tta", "none") == "none":
    return None
  if info["format"] == "onnx":
    return (f"config.eval.tta={info['tta']!r} is not in the exported program: ONNX Runtime gives one view's "
            "predictions, not the average of the views the config evaluates with (fer_jax.tta; model.json's "
            "\"tta_included\": false).")
  return (f"config.eval.tta={info['tta']!r} is not in the exported program, which computes one view: fer_jax.predict "
          "and fer_jax.load apply it around the program (model.json's \"tta\"); other runtimes give one view's "
          "predictions (\"tta_included\": false).")


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("configs/<method>.py:<dataset> of the checkpoint.")
  cli.define_path("checkpoint", None, "Training workdir, checkpoint folder or converted model.")
  cli.define_path("out", None, "New folder for the export.")
  flags.DEFINE_integer("batch_size", 0, "Fixed batch size; 0 = symbolic (any batch size).", lower_bound=0)
  flags.DEFINE_list("platforms", ["cpu", "cuda"], "stablehlo: platforms to lower for (cpu, cuda, rocm, tpu).")
  flags.DEFINE_enum("format", "stablehlo", FORMATS, "stablehlo (JAX, Orbax variables) or onnx (one file, "
                    "needs the onnx extra).")
  cli.define_path_list("verify_images", [], "onnx: image files to run through ONNX Runtime and JAX; the worst "
                       "relative logit difference is logged and kept in model.json.")
  cli.mark_required(["config", "checkpoint", "out"])


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  config = args.config
  if args.format == "onnx":
    config = onnx_config(config)  # before validation resolves "auto" to this machine's dtype
  validation.validate(config, training=False)
  # Every argument is checked before the checkpoint is read and the model traced.
  if args.format == "onnx" and args["platforms"].present:
    raise UserError("--platforms chooses what a StableHLO program is lowered for; an ONNX file runs wherever ONNX "
                    "Runtime does: drop --platforms, or drop --format=onnx.")
  if args.verify_images and args.format != "onnx":
    raise UserError("--verify_images checks an ONNX export: add --format=onnx or drop it.")
  check_verify_images(args.verify_images)
  platforms = check_platforms(args.platforms, args.format)
  out = check_out(args.out)
  check_not_an_export(args.checkpoint)
  mesh_lib.keep_compilations()
  with stopping.exit_status_on_stop(stopped=f"Nothing was written to {out}; the same command exports again."):
    step_directory = checkpointing.step_folder(args.checkpoint)  # once: a workdir still training saves newer steps
    model = models.build_model(config)
    variables = models.load_trained_variables(config, model, step_directory)
    info = export(config, jax.device_get(variables), out, args.batch_size or None, platforms, args.format,
                  args.verify_images, read_stored_shape(step_directory))
  if "onnx_runtime_vs_jax" in info:
    comparison = info["onnx_runtime_vs_jax"]
    logging.info("ONNX Runtime vs JAX on %d image%s: worst relative logit error %.2e", comparison["images"],
                 "" if comparison["images"] == 1 else "s", comparison["worst_relative_logit_error"])
  if tta_line(info):
    logging.info("%s", tta_line(info))
  logging.info("%s", exported_line(info, out, config_lib.config_arguments(sys.argv)))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
