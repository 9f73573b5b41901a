"""`fer_jax.visualize` checks its --out and --input before reading any image or the model
(tests/test_bad_input_predict.py covers unreadable images)."""

import pytest
from PIL import Image

from helpers import assert_user_error, run_command

pytestmark = pytest.mark.integration  # each test runs the command in a subprocess


def _visualize(input_path, out):
  # No checkpoint there: these checks come before the model is read.
  return run_command("fer_jax.visualize", "--config=configs/apvit.py:synthetic", "--checkpoint=/nonexistent",
                     f"--input={input_path}", f"--out={out}", timeout=300)


@pytest.fixture
def face(tmp_path):
  path = tmp_path / "face.png"
  Image.new("RGB", (112, 112), (128, 90, 70)).save(path)
  return path


def test_an_out_under_a_file_is_refused_first(face, tmp_path):
  """It failed only after the model had run, when writing the first PNG."""
  result = _visualize(face, face / "maps")
  assert_user_error(result, f"--out={face / 'maps'} cannot be created: {face} is a file, not a folder")


def test_a_video_is_named_as_one(tmp_path):
  """It was called "not an image PIL can identify" with a PNG or JPEG to replace it with."""
  (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
  result = _visualize(tmp_path / "clip.mp4", tmp_path / "maps")
  assert_user_error(result, f"--input={tmp_path / 'clip.mp4'} is a video; visualize reads photos",
                    "fer_jax.predict classifies a video's frames")
