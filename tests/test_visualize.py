"""`fer_jax.visualize` checks its --out, --input and --checkpoint before reading any image or the model
(tests/test_bad_input_predict.py covers unreadable images), runs every batch through one program and warns
of images that are not face crops."""

import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from fer_jax import attention_maps
from fer_jax import checkpointing
from fer_jax import export
from fer_jax import inference
from fer_jax import models
from fer_jax import visualize
from fer_jax.errors import UserError
from helpers import assert_user_error, compiled_during, get_config, random_variables, run_command


def _visualize(input_path, out, checkpoint="/nonexistent"):
  # No checkpoint there: these checks come before the model is read.
  return run_command("fer_jax.visualize", "--config=configs/apvit.py:synthetic", f"--checkpoint={checkpoint}",
                     f"--input={input_path}", f"--out={out}", timeout=300)


@pytest.fixture
def face(tmp_path):
  path = tmp_path / "face.png"
  Image.new("RGB", (112, 112), (128, 90, 70)).save(path)
  return path


@pytest.mark.integration  # runs the command in a subprocess
def test_an_out_under_a_file_is_refused_first(face, tmp_path):
  """It failed only after the model had run, when writing the first PNG."""
  result = _visualize(face, face / "maps")
  assert_user_error(result, f"--out={face / 'maps'} cannot be created: {face} is a file, not a folder")


@pytest.mark.integration
def test_a_video_is_named_as_one(tmp_path):
  """It was called "not an image PIL can identify" with a PNG or JPEG to replace it with."""
  (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
  result = _visualize(tmp_path / "clip.mp4", tmp_path / "maps")
  assert_user_error(result, f"--input={tmp_path / 'clip.mp4'} is a video; visualize reads photos",
                    "fer_jax.predict classifies a video's frames")


@pytest.mark.integration
def test_an_export_folder_as_the_checkpoint_is_named_as_one(face, tmp_path):
  """It was "No checkpoint found"."""
  for name in (export.METADATA, export.STABLEHLO, export.VARIABLES):
    (tmp_path / "exported" / name).parent.mkdir(exist_ok=True)
    (tmp_path / "exported" / name).write_text("{}")
  result = _visualize(face, tmp_path / "maps", checkpoint=tmp_path / "exported")
  assert_user_error(result, f"--checkpoint={tmp_path / 'exported'} is an export folder, not a checkpoint: pass the "
                    "checkpoint it was exported from")


def test_the_last_batch_is_padded_to_the_batch_size_and_its_padding_dropped():
  """The last, partial batch compiled a second program."""
  forward = jax.jit(lambda scale, batch: (batch * scale, {"total": batch.sum(axis=(1, 2, 3))}))
  images = [np.full((4, 4, 3), index + 1, np.int32) for index in range(5)]
  scaled, outputs = inference.forward_in_batches(forward, 2, images, batch_size=2)  # as visualize runs its batches
  assert forward._cache_size() == 1
  np.testing.assert_array_equal(scaled, 2 * np.stack(images))
  np.testing.assert_array_equal(outputs["total"], [48 * (index + 1) for index in range(5)])


@pytest.mark.integration  # compiles a small APViT
def test_maps_of_a_folder_compile_one_forward_pass_and_name_an_image_that_is_no_face_crop(tmp_path, caplog):
  config = get_config("configs/apvit.py:synthetic")
  checkpoint = checkpointing.save_model(str(tmp_path / "model"), random_variables(config), config)
  sizes = {"face0.png": (40, 40), "face1.png": (36, 40), "photo.png": (120, 60), "tall.png": (60, 140)}  # stored: 32
  for name, size in sizes.items():
    Image.new("RGB", size, (120, 90, 70)).save(tmp_path / name)
  written = []
  with caplog.at_level(logging.WARNING):
    compiled = compiled_during(lambda: written.extend(visualize.write_attention_maps(
        config, checkpoint, [str(tmp_path / name) for name in sizes], str(tmp_path / "maps"), batch_size=2)))
  assert compiled["jit(forward)"] == 1, compiled
  assert len(written) == 2 * len(sizes)
  warnings = [record.getMessage() for record in caplog.records if "not face crops" in record.getMessage()]
  assert warnings == [f"2 of 4 images (the first: {tmp_path / 'photo.png'}, 120×60) are not face crops (nearly "
                      "square, at most 128 px): their maps are of the whole image squashed to the model's input, no "
                      "face is found in it; crop the faces first."]  # one warning, not one an image


class Mean(nn.Module):
  """A method of the user's: a linear head on the images' mean colour."""

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    return {"logits": nn.Dense(7)(jnp.mean(images, axis=(1, 2))), "maps": images[..., 0]}


def save_maps_as_they_are(images, outputs, out_dir):
  """As a method of the user's might: straight into out_dir, which it does not create."""
  paths = [os.path.join(out_dir, f"{index:04d}.npy") for index in range(len(images))]
  for path, maps in zip(paths, np.asarray(outputs["maps"])):
    np.save(path, maps)
  return paths


def _method_of_yours(tmp_path, monkeypatch) -> tuple:
  """(config, checkpoint) of `Mean`, registered as the config's method, and a face crop at tmp_path/face.png."""
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 16
  method = models.Method(build=lambda model_config: Mean(), save_attention_maps=save_maps_as_they_are)
  monkeypatch.setattr(models, "get_method", lambda name: method)
  checkpoint = checkpointing.save_model(str(tmp_path / "model"), models.init_variables(Mean(), config,
                                                                                       jax.random.key(0)), config)
  Image.new("RGB", (40, 40), (120, 90, 70)).save(tmp_path / "face.png")
  return config, checkpoint


def test_a_method_of_yours_saves_its_maps_into_an_out_not_made_yet(tmp_path, monkeypatch):
  """visualize left --out to the method's save_attention_maps (fer_jax's own create it): a method of yours that
  wrote there failed with "No such file or directory"."""
  config, checkpoint = _method_of_yours(tmp_path, monkeypatch)
  out = tmp_path / "maps" / "new"
  written = visualize.write_attention_maps(config, checkpoint, [str(tmp_path / "face.png")], str(out), batch_size=2)
  assert written == [str(out / "0000.npy")] and np.load(out / "0000.npy").shape == (16, 16)


def test_the_line_that_says_what_was_written_counts_the_images_skipped(tmp_path, monkeypatch, caplog):
  """It named each unreadable image, then read "Wrote 1 PNG to …", without a count of those skipped."""
  config, checkpoint = _method_of_yours(tmp_path, monkeypatch)
  (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
  paths = [str(tmp_path / "broken.jpg"), str(tmp_path / "face.png")]
  with caplog.at_level(logging.INFO):
    visualize.write_attention_maps(config, checkpoint, paths, str(tmp_path / "maps"), batch_size=2,
                                   unlisted=[(str(tmp_path / "locked"), "locked cannot be listed")])
  assert [record.getMessage() for record in caplog.records if record.getMessage().startswith("Wrote")] == [
      f"Wrote 1 PNG to {tmp_path / 'maps'}; skipped 2 of 3 images (2 unreadable; see the warnings above)."]


def test_a_method_without_maps_is_told_how_to_give_it_some(monkeypatch):
  config = get_config("configs/lhcnet.py:synthetic")
  with pytest.raises(UserError, match=r"^Model 'lhcnet' has no attention maps to save: pass an APViT, SCAN-CCI or DAN "
                                      r"config and checkpoint, or give your method a `save_attention_maps` "
                                      r"\(docs/extending\.md\)\.$"):
    visualize.write_attention_maps(config, "/nonexistent", [], "/nonexistent/maps", batch_size=2)


def test_maps_show_the_faces_in_their_own_colours(tmp_path):
  """The normalised input was stretched back to 0–255 over all channels: ImageNet's per-channel mean and std
  turned a grey 128 into (117, 125, 136)."""
  config = get_config("configs/apvit.py:synthetic")
  checkpoint = checkpointing.save_model(str(tmp_path / "model"), random_variables(config), config)
  pixels = np.full((32, 32, 3), 128, np.uint8)
  pixels[:8, :8], pixels[-8:, -8:] = 255, 0
  Image.fromarray(pixels).save(tmp_path / "grey.png")
  visualize.write_attention_maps(config, checkpoint, [str(tmp_path / "grey.png")], str(tmp_path / "maps"), 1)
  face = np.asarray(Image.open(tmp_path / "maps" / "0000_app_patches.png"))[:, :224]  # the face, 7× enlarged
  np.testing.assert_array_equal(face[112, 112], [128, 128, 128])
  np.testing.assert_array_equal(face[0, 0], [255, 255, 255])


@pytest.mark.integration
def test_an_out_holding_maps_of_an_earlier_run_is_refused(face, tmp_path):
  """A second run into one --out overwrote the first maps and left the rest, numbered for other images."""
  (tmp_path / "maps").mkdir()
  (tmp_path / "maps" / "0007_app_patches.png").write_bytes(b"")
  result = _visualize(face, tmp_path / "maps")
  assert_user_error(result, f"--out={tmp_path / 'maps'} holds the maps of an earlier run (1 file: "
                    "0007_app_patches.png), numbered for its images: pass a new --out, or delete them.")


def test_a_missing_input_asks_for_images_alone(tmp_path):
  """It asked for "an image or video file", and visualize refuses videos."""
  with pytest.raises(UserError, match=rf"^--input={tmp_path / 'missing'} does not exist: pass an image file, or a "
                                      r"folder of them\.$"):
    inference.list_images(str(tmp_path / "missing"))


def test_an_apvit_without_token_pooling_draws_its_kept_patches_alone(tmp_path):
  """With every ATP keep rate 1 (APP alone, a valid config) no block pools and drawing the maps ended in ValueError."""
  config = get_config("configs/apvit.py:synthetic")
  config.model.atp_keep_rates = (1.0,) * config.model.depth
  checkpoint = checkpointing.save_model(str(tmp_path / "model"), random_variables(config), config)
  Image.new("RGB", (32, 32), (120, 90, 70)).save(tmp_path / "face.png")
  written = visualize.write_attention_maps(config, checkpoint, [str(tmp_path / "face.png")], str(tmp_path / "maps"), 1)
  assert [os.path.basename(path) for path in written] == ["0000_app_patches.png"]


@pytest.mark.integration  # the command in a subprocess, a ResNet-18 DAN's forward and backward pass
def test_dan_draws_each_heads_grad_cam_over_a_photo(tmp_path):
  """DAN had no maps ("has no attention maps to save"); the official run_grad_cam.py draws one per head."""
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 64
  config.model.num_heads = 2
  checkpoint = checkpointing.save_model(str(tmp_path / "model"), random_variables(config), config)
  result = run_command("fer_jax.visualize", "--config=configs/dan.py:synthetic", "--config.input.size=64",
                       "--config.model.num_heads=2", f"--checkpoint={checkpoint}",
                       f"--input={cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)}",
                       f"--out={tmp_path / 'maps'}", timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 of 1 images (the first: " in result.stderr and "are not face crops" in result.stderr
  assert sorted(os.listdir(tmp_path / "maps")) == ["0000_head0_cam.png", "0000_head1_cam.png"]
  maps = [np.asarray(Image.open(tmp_path / "maps" / name)) for name in sorted(os.listdir(tmp_path / "maps"))]
  assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in maps)
  assert not np.array_equal(*maps)


def test_a_cam_is_drawn_in_opencvs_jet_added_to_the_face_and_scaled_to_its_brightest_value():
  """As grad-cam's show_cam_on_image(use_rgb=True), which DAN's official run_grad_cam.py draws with: a map's peak
  is OpenCV's dark red (128, 0, 0), its zero dark blue (0, 0, 128), both added to the face in 0–1, the sum over its
  largest value."""
  face = np.zeros((2, 2, 3), np.uint8)
  face[0, 0] = (0, 64, 0)
  cam = np.float32([[1.0, 0.0], [0.0, 0.0]])
  drawn = attention_maps.cam_over_face(face, cam)
  np.testing.assert_array_equal(drawn[0, 0], [255, 127, 0])  # (128, 64, 0) / 128
  np.testing.assert_array_equal(drawn[1, 1], [0, 0, 255])


def test_a_cam_with_no_positive_value_is_drawn_as_zero_not_nan():
  """grad-cam divides by the map's maximum, 0 there: NaN, cast to uint8 as whatever the platform gives."""
  cams = jnp.zeros((1, 2, 2))
  np.testing.assert_array_equal(attention_maps.stretched_to_input(cams, 4, 4), np.zeros((1, 4, 4)))
