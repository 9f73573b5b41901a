"""Bad inputs to predict and visualize: each bad image is skipped and named with its fix; a bad
--input, --output or --checkpoint exits 2 with one `error:` line naming the path and the fix, as
does a count out of range (a batch size or step count) there and in export and benchmark."""

import json
import os
import pathlib
import shutil
import struct
import sys
import types
import zlib

from matplotlib import cbook
import numpy as np
import pytest
from PIL import Image

from fer_jax import checkpointing
from fer_jax import errors
from fer_jax import export
from fer_jax.data import decode
from helpers import ROOT, assert_user_error, get_config, random_variables, run_command

DAN = ("--config=configs/dan.py:synthetic", "--config.input.size=32")
APVIT = ("--config=configs/apvit.py:synthetic",)
GOOD = ["face.png", "hopper.jpg"]
BAD = ["a.jpg", "b.jpg", "bomb.png", "corrupt.png", "empty.mp4", "empty.png", "locked.png", "locked_folder",
       "notes.jpg", "notes.mp4", "truncated.jpg"]
BAD_IMAGES = [name for name in BAD if name.endswith(decode.IMAGE_SUFFIXES)]  # what visualize reads of them


def png(width: int, height: int, compressed_pixels: bytes) -> bytes:
  """An 8-bit RGB PNG whose header claims width×height, with the given IDAT body."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed_pixels) + chunk(b"IEND", b"")


def predict(checkpoint: str, input_path, output, obey_permissions: bool = False):
  return run_command("fer_jax.predict", *DAN, f"--checkpoint={checkpoint}", f"--input={input_path}",
                     f"--output={output}", timeout=300, obey_permissions=obey_permissions)


def visualize(checkpoint: str, input_path, out, obey_permissions: bool = False):
  return run_command("fer_jax.visualize", *APVIT, f"--checkpoint={checkpoint}", f"--input={input_path}",
                     f"--out={out}", timeout=300, obey_permissions=obey_permissions)


def save_checkpoint(config, folder) -> str:
  return os.path.dirname(checkpointing.save_model(str(folder), random_variables(config), config))


@pytest.fixture(scope="module")
def dan_checkpoint(tmp_path_factory):
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  return save_checkpoint(config, tmp_path_factory.mktemp("dan"))


@pytest.fixture(scope="module")
def apvit_checkpoint(tmp_path_factory):
  return save_checkpoint(get_config("configs/apvit.py:synthetic"), tmp_path_factory.mktemp("apvit"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """Two readable faces beside one file of each bad kind (images, an empty image, an empty video and a text file named
  as one), a symbolic-link loop, a link to the parent folder and an unreadable subfolder."""
  folder = tmp_path_factory.mktemp("mixed")
  hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
  shutil.copy(hopper, folder / "hopper.jpg")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "face.png")
  (folder / "bomb.png").write_bytes(png(30000, 30000, zlib.compress(bytes(1024))))
  (folder / "notes.jpg").write_text("Notes, not a photo.")
  (folder / "empty.mp4").write_bytes(b"")
  (folder / "empty.png").write_bytes(b"")
  (folder / "notes.mp4").write_text("Notes, not a video.")
  (folder / "corrupt.png").write_bytes(png(48, 48, rng.bytes(512)))
  jpeg = pathlib.Path(hopper).read_bytes()
  (folder / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  os.symlink("b.jpg", folder / "a.jpg")
  os.symlink("a.jpg", folder / "b.jpg")
  os.symlink("..", folder / "up")
  Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "locked.png")
  os.chmod(folder / "locked.png", 0)
  (folder / "locked_folder").mkdir()
  Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "locked_folder" / "hidden.png")
  os.chmod(folder / "locked_folder", 0)
  return folder


@pytest.fixture(scope="module")
def predicted(dan_checkpoint, mixed, tmp_path_factory):
  """One predict run over the mixed folder, as a user without root's permission bypass: (result, JSON)."""
  output = tmp_path_factory.mktemp("predicted") / "preds.json"
  result = predict(dan_checkpoint, mixed, output, obey_permissions=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return result, json.loads(output.read_text())


def skip_warning(result, path, what: str = "input") -> str:
  """The warning line that skips `path`: an unreadable "input" to predict, "image" to visualize."""
  lines = [line for line in result.stderr.splitlines() if f"Skipping unreadable {what}: {path} " in line]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


# --- bad images among good ones: skipped, named, counted; the others predicted -----------------


def test_only_the_readable_images_are_predicted_and_the_rest_counted(predicted):
  result, written = predicted
  assert [os.path.basename(p["image"]) for p in written["predictions"]] == GOOD
  assert sorted(os.path.basename(s["image"]) for s in written["skipped"]) == BAD
  assert (f"skipped {len(BAD)} of {len(GOOD) + len(BAD)} inputs ({len(BAD)} unreadable; see the warnings above)."
          in result.stderr)
  rows = {os.path.basename(p["image"]): p for p in written["predictions"]}
  assert rows["face.png"]["box"] is None and rows["hopper.jpg"]["face"] == 0  # a 48×48 crop; a 512×600 photo's face
  assert all(list(row) == list(rows["hopper.jpg"]) for row in rows.values())  # every key on every row


def test_a_header_claiming_30000x30000_pixels_is_refused(predicted, mixed):
  warning = skip_warning(predicted[0], mixed / "bomb.png")
  assert "is refused before decoding: its header claims 900,000,000 pixels" in warning
  assert f"and the limit is {decode.MAX_IMAGE_PIXELS:,}" in warning and "downscale it or remove it" in warning


def test_a_text_file_named_like_an_image_is_skipped(predicted, mixed):
  warning = skip_warning(predicted[0], mixed / "notes.jpg")
  assert "is not an image PIL can identify" in warning and "replace it with a PNG or JPEG, or remove it" in warning


def test_an_empty_image_is_named_empty_as_a_video_is(predicted, mixed, tmp_path):
  """It was "not an image PIL can identify (corrupt, or not an image at all)"."""
  assert skip_warning(predicted[0], mixed / "empty.png").endswith(
      f"Skipping unreadable input: {mixed / 'empty.png'} is empty (0 bytes): re-copy it, or remove it.")
  (tmp_path / "empty.jpg").write_bytes(b"")
  with pytest.raises(decode.UnreadableImageError, match=r"empty\.jpg is empty \(0 bytes\): re-copy it, or remove "
                                                      r"it\.$"):
    decode.read_file(str(tmp_path / "empty.jpg"), (32, 32, 3))


def test_a_float_image_of_values_in_0_to_1_is_scaled_by_255_and_others_are_clipped(tmp_path):
  """A float TIFF (PIL's mode "F") of values in [0, 1] was read all black (PIL's convert): "no face found"."""
  unit = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
  for name, samples, expected in (("unit.tif", unit, np.round(unit * 255)),
                                  ("wide.tif", unit * 300 - 20, np.clip(unit * 300 - 20, 0, 255).astype(np.uint8))):
    Image.fromarray(samples).save(tmp_path / name)
    read = decode.read_file(str(tmp_path / name), (48, 48, 1))[..., 0]
    np.testing.assert_array_equal(read, expected, err_msg=name)


def test_an_empty_video_is_named_empty(predicted, mixed):
  """It was "cannot be opened as a video by OpenCV: replace it with an MP4 or AVI file", under "unreadable image"."""
  assert skip_warning(predicted[0], mixed / "empty.mp4").endswith(
      f"Skipping unreadable input: {mixed / 'empty.mp4'} is empty (0 bytes): re-copy it, or remove it.")


def test_a_file_named_as_a_video_that_opencv_cannot_open_is_named_with_the_likely_cause(predicted, mixed):
  assert skip_warning(predicted[0], mixed / "notes.mp4").endswith(
      f"{mixed / 'notes.mp4'} cannot be opened as a video by OpenCV: it is likely truncated or not a video. Re-copy or "
      "re-encode it (to MP4, say), or remove it.")


def test_a_corrupt_image_is_skipped(predicted, mixed):
  warning = skip_warning(predicted[0], mixed / "corrupt.png")
  assert "is truncated or corrupt" in warning and "replace it with an intact copy or remove it" in warning


def test_a_truncated_image_is_skipped(predicted, mixed):
  warning = skip_warning(predicted[0], mixed / "truncated.jpg")
  assert "is truncated or corrupt (image file is truncated" in warning
  assert "replace it with an intact copy or remove it" in warning


def test_a_symbolic_link_loop_is_skipped_and_a_link_to_the_parent_is_not_followed(predicted, mixed):
  for name in ("a.jpg", "b.jpg"):
    warning = skip_warning(predicted[0], mixed / name)
    assert "Too many levels of symbolic links" in warning and "fix the symbolic-link loop or remove it" in warning
  assert all(os.path.dirname(p["image"]) == str(mixed) for p in predicted[1]["predictions"])


def test_an_unreadable_file_is_skipped(predicted, mixed):
  warning = skip_warning(predicted[0], mixed / "locked.png")
  assert "Permission denied" in warning and "make it readable (chmod a+r) or remove it" in warning


def test_an_unreadable_subfolder_is_skipped_named_and_listed(predicted, mixed):
  """It was warned about, but left out of the output's skipped inputs and of the count."""
  reason = (f"{mixed / 'locked_folder'} cannot be listed (Permission denied): make it readable (chmod a+rx) or "
            "remove it.")
  assert f"Skipping unreadable folder: {reason}" in predicted[0].stderr
  assert {"image": str(mixed / "locked_folder"), "reason": reason} in predicted[1]["skipped"]


def test_the_size_limit_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
  """Above our limit only (9000²), above PIL's warning threshold (12000²) and above its error threshold (30000²)."""
  monkeypatch.setattr(decode, "to_stored", lambda *_: pytest.fail("decoded a refused image"))
  big = tmp_path / "big.png"
  for side, claimed in ((9000, "9000×9000"), (12000, "144,000,000"), (30000, "900,000,000")):
    big.write_bytes(png(side, side, zlib.compress(bytes(1024))))
    refusal = f"big.png is refused before decoding: its header claims {claimed}"
    with pytest.raises(decode.UnreadableImageError, match=refusal):
      decode.read_file(str(big), (32, 32, 3))


# --- bad --input, --output, --checkpoint: exit 2 before the model is loaded -------------------


@pytest.mark.parametrize("names", [[], ["notes.txt", "labels.csv"]], ids=["empty", "no_image_names"])
@pytest.mark.integration
def test_a_folder_without_images_names_the_folder_and_the_extensions(names, tmp_path):
  folder = tmp_path / "faces"
  folder.mkdir()
  for name in names:
    (folder / name).write_text("not an image")
  result = predict("/nonexistent/checkpoint", folder, tmp_path / "preds.csv")
  assert_user_error(result, f"No image file under --input={folder}", ".jpg, .jpeg, .png",
                    "pass a folder that holds images with one of these extensions, or one image file")


@pytest.mark.parametrize("module, paths, flag, message", [
    ("fer_jax.predict", ("--checkpoint=C", "--input=I", "--output=o.csv"), "--batch_size=0", "0 is not a positive integer"),
    ("fer_jax.predict", ("--checkpoint=C", "--input=I", "--output=o.csv"), "--min_score=2",
     "2.0 is not a number in the range [0.0, 1.0]"),
    ("fer_jax.predict", ("--checkpoint=C", "--input=I", "--output=o.csv"), "--min_face_size=-5",
     "-5.0 is not a non-negative number"),
    ("fer_jax.visualize", ("--checkpoint=C", "--input=I", "--out=O"), "--batch_size=-2", "-2 is not a positive integer"),
    ("fer_jax.export", ("--checkpoint=C", "--out=O"), "--batch_size=-3", "-3 is not a non-negative integer"),
    ("fer_jax.benchmark", (), "--steps=0", "0 is not a positive integer"),
    ("fer_jax.benchmark", (), "--warmup=-1", "-1 is not a non-negative integer"),
    ("fer_jax.linear_baseline", (), "--ridge=-10", "-10.0 is not a non-negative number"),
])
def test_a_count_out_of_range_stops_before_any_work(module, paths, flag, message):
  """They gave a division by zero, negative images a second or an index error (predict's minimums: every face
  skipped; a negative ridge penalty a baseline scikit-learn refuses)."""
  assert_user_error(run_command(module, *DAN, *paths, flag, timeout=120), f"flag {flag}: {message}")


@pytest.mark.integration
def test_a_missing_input_is_named(tmp_path):
  result = predict("/nonexistent/checkpoint", tmp_path / "missing", tmp_path / "preds.csv")
  assert_user_error(result, f"--input={tmp_path / 'missing'} does not exist", "pass an image or video file, or a folder")


@pytest.mark.integration
def test_an_output_in_a_read_only_folder_fails_before_the_model_is_loaded(mixed, tmp_path):
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  os.chmod(read_only, 0o555)
  output = read_only / "preds.csv"
  result = predict("/nonexistent/checkpoint", mixed, output, obey_permissions=True)
  assert_user_error(result, f"--output={output} cannot be written: the folder {read_only} is not writable",
                    "fix its permissions or choose another location")


@pytest.mark.integration
def test_a_read_only_output_file_fails_before_the_model_is_loaded(mixed, tmp_path):
  output = tmp_path / "preds.csv"
  output.write_text("kept\n")
  os.chmod(output, 0o444)
  result = predict("/nonexistent/checkpoint", mixed, output, obey_permissions=True)
  assert_user_error(result, f"--output={output} exists and is not writable: fix its permissions")
  assert output.read_text() == "kept\n"


@pytest.mark.integration
def test_an_output_under_a_regular_file_fails_before_the_model_is_loaded(mixed, tmp_path):
  (tmp_path / "notes.txt").write_text("a file, not a folder")
  output = tmp_path / "notes.txt" / "preds.csv"
  result = predict("/nonexistent/checkpoint", mixed, output)
  assert_user_error(result, f"--output={output} cannot be created: {tmp_path / 'notes.txt'} is a file, not a folder",
                    "choose another path")


@pytest.mark.integration
def test_an_output_where_no_file_can_be_made_fails_before_the_model_is_loaded(mixed):
  """/proc is writable by its permissions, for root; the run did all the work, then failed without naming --output."""
  result = predict("/nonexistent/checkpoint", mixed / "face.png", "/proc/preds.csv")
  assert_user_error(result, "--output=/proc/preds.csv cannot be written", "/proc")  # not "No checkpoint found"


@pytest.mark.integration
def test_an_annotate_path_that_is_a_file_fails_before_the_model_is_loaded(mixed, tmp_path):
  (tmp_path / "drawn.png").write_bytes(b"")
  result = run_command("fer_jax.predict", *DAN, f"--checkpoint={tmp_path / 'none'}", f"--input={mixed / 'face.png'}",
                       f"--output={tmp_path / 'p.csv'}", f"--annotate={tmp_path / 'drawn.png'}", timeout=300)
  assert_user_error(result, f"--annotate={tmp_path / 'drawn.png'} is a file: pass a folder")  # not "No checkpoint"


@pytest.mark.integration
def test_an_output_with_another_extension_is_refused(mixed, tmp_path):
  result = predict("/nonexistent/checkpoint", mixed, tmp_path / "preds.txt")
  assert_user_error(result, f"--output={tmp_path / 'preds.txt'} must end in .csv or .json")


@pytest.mark.integration
def test_a_checkpoint_folder_without_a_checkpoint_is_named(mixed, tmp_path):
  result = predict(str(tmp_path), mixed / "face.png", tmp_path / "preds.csv")
  assert_user_error(result, f"No checkpoint found at {tmp_path}", "pass a training workdir")


@pytest.mark.integration
def test_a_damaged_export_and_one_for_another_platform_are_named_with_the_fix(mixed, tmp_path):
  """Both ended in tracebacks (OUT_OF_RANGE from Orbax, jax.export's ValueError)."""
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  variables = random_variables(config)
  export.export(config, variables, str(tmp_path / "damaged"), platforms=("cpu",))
  for path in (tmp_path / "damaged" / export.VARIABLES).glob("**/d/*"):
    os.truncate(path, path.stat().st_size // 2)
  result = predict(str(tmp_path / "damaged"), mixed / "face.png", tmp_path / "preds.csv")
  assert_user_error(result, f"Cannot read {tmp_path / 'damaged' / 'variables'} (OUT_OF_RANGE",
                    "damaged or incomplete; export the model again")
  export.export(config, variables, str(tmp_path / "tpu"), platforms=("tpu",))
  result = predict(str(tmp_path / "tpu"), mixed / "face.png", tmp_path / "preds.csv")
  assert_user_error(result, "was exported for tpu only, not for this machine's cpu",
                    "export the model again with --platforms=tpu,cpu")


def test_closed_loop_callbacks_after_a_failed_read_print_nothing_beside_the_message(monkeypatch):
  """The reads still in flight when Orbax's fails call back into the closed asyncio loop: each printed a traceback
  after the one-line message (in about one run in three of the test above), and in a Python process that goes on
  after fer_jax.load's error, 4 to 100 of them."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  with pytest.raises(checkpointing.CheckpointError, match="Cannot read the export DIR"):
    with checkpointing.read_errors("the export DIR", "export it again"):
      raise ValueError("a damaged file")
  errors.quiet_closed_event_loops()  # again (cli.run's): one filter
  closed, other = (types.SimpleNamespace(exc_value=RuntimeError(text)) for text in ("Event loop is closed", "other"))
  sys.unraisablehook(closed)
  sys.unraisablehook(other)
  assert seen == [other]


# --- visualize ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_visualize_skips_a_refused_image_and_draws_the_others(apvit_checkpoint, mixed, tmp_path):
  """The last line was "wrote 4 PNGs to maps", printed to stdout, where everything else is logged to stderr; then it
  did not count the images skipped, then not the folder it could not list (locked_folder)."""
  result = visualize(apvit_checkpoint, mixed, os.path.relpath(tmp_path / "maps", ROOT), obey_permissions=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "is refused before decoding" in skip_warning(result, mixed / "bomb.png", "image")
  assert f"0001_*.png: {mixed / 'hopper.jpg'}" in result.stderr
  assert sorted(os.listdir(tmp_path / "maps")) == [
      f"{index:04d}_{kind}.png" for index in range(len(GOOD)) for kind in ("app_patches", "atp_tokens")]
  skipped = len(BAD_IMAGES) + 1  # and locked_folder
  assert (f"] Wrote {2 * len(GOOD)} PNGs to {tmp_path / 'maps'}; skipped {skipped} of {len(GOOD) + skipped} images "
          f"({skipped} unreadable; see the warnings above).\n" in result.stderr), result.stderr[-3000:]
  assert result.stdout == ""


@pytest.mark.integration
def test_visualize_with_a_refused_image_as_the_only_input_fails_before_the_model_is_loaded(apvit_checkpoint, mixed,
                                                                                            tmp_path):
  result = visualize(apvit_checkpoint, mixed / "bomb.png", tmp_path / "maps")
  assert_user_error(result, f"No readable image to visualize: {mixed / 'bomb.png'} is refused before decoding",
                    "downscale it or remove it")


@pytest.mark.integration
def test_visualize_names_an_empty_folder(tmp_path):
  result = visualize("/nonexistent/checkpoint", tmp_path, tmp_path / "maps")
  assert_user_error(result, f"No image file under --input={tmp_path}", ".jpg, .jpeg, .png")


@pytest.mark.integration
def test_visualize_names_a_missing_input(tmp_path):
  result = visualize("/nonexistent/checkpoint", tmp_path / "missing", tmp_path / "maps")
  assert_user_error(result, f"--input={tmp_path / 'missing'} does not exist")
