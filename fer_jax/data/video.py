"""Videos, read frame by frame with OpenCV: which files are videos, and their frames as RGB arrays (for `predict`, and
for `fer_jax.load(...).detect_and_predict` called on each frame)."""

import os

from absl import logging
import cv2

from fer_jax.data import decode

# FFmpeg's own messages on a damaged video (hundreds of lines) go unsaid: `frames` warns once, naming the file.
# OpenCV reads this when its first capture opens; a value the user set is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

# The containers OpenCV's FFmpeg reads (each checked by writing and reading one: tests/test_predict.py).
EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".wmv", ".flv", ".3gp", ".mpg", ".mpeg", ".ts", ".mts",
              ".m2ts")


def is_video(path: str) -> bool:
  """Whether `path` is named as a video (`EXTENSIONS`, any case)."""
  return path.lower().endswith(EXTENSIONS)


MAX_FAILED_READS = 250  # failed reads in a row taken for the end of a video whose header claims more frames


def frames(path: str, stride: int):
  """(frame index, time in seconds, RGB frame) of every `stride`-th frame, and of the first frame read whatever its
  index (a damaged frame 0 would leave a video shorter than `stride` without one); the frame count its header gives
  (0 if unknown). A frame's time is its own timestamp (a phone's variable frame rate), else index / frame rate. A
  frame that cannot be read (a damaged video) is passed over, and their number warned about once; frames the header
  counts beyond those read are not, where the frames read reach the header's duration (MKV's and MPEG-TS's counts
  are estimates)."""
  file, capture = _open(path)
  fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
  count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)

  def read():
    index = failed = failed_in_a_row = 0
    end, first = 0.0, True  # the time the last frame read ends; no frame read yet
    try:
      while True:
        kept = index % stride == 0 or first
        ok = capture.grab()  # decodes the frame; retrieve() converts it to BGR, only for the frames kept
        if ok and kept:
          ok, frame = capture.retrieve()
        if ok:
          failed, failed_in_a_row = failed + failed_in_a_row, 0
          milliseconds = capture.get(cv2.CAP_PROP_POS_MSEC)
          time = milliseconds / 1000 if milliseconds > 0 or index == 0 else index / fps
          end = time + 1 / fps
          if kept:
            first = False
            yield index, time, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        elif index >= count or failed_in_a_row == MAX_FAILED_READS:
          break
        else:  # the next read goes on past the bad frame
          failed_in_a_row += 1
        index += 1
    finally:
      capture.release()
      file.close()
    missing = failed_in_a_row + max(count - index, 0)  # after the last frame read
    if end >= (count - 0.5) / fps:
      missing = 0  # the frames read span the header's duration: its count was an estimate
    if unread := failed + missing:
      logging.warning("%s: %d of its %d frames could not be read (the file is damaged or truncated); the others "
                      "were read. Re-copy or re-encode it to read them all.", path, unread, count)

  return read(), count


def _open(path: str):
  """(the file, OpenCV's capture of it) or `decode.UnreadableImageError`. OpenCV reads the file Python opened, by
  its descriptor's path on Linux: given a name that is not valid UTF-8 (Python holds such bytes as surrogates)
  it crashes the process."""
  try:
    file = open(path, "rb")  # pylint: disable=consider-using-with  (closed by the caller, or below on failure)
  except OSError as error:
    raise decode.unreadable_error(path, error) from error
  by_descriptor = f"/proc/self/fd/{file.fileno()}"
  if os.path.exists(by_descriptor):
    capture = cv2.VideoCapture(by_descriptor)
  elif os.fsencode(path).decode("utf-8", "replace") == path:
    capture = cv2.VideoCapture(path)
  else:
    file.close()
    raise decode.UnreadableImageError(f"{path} cannot be opened by OpenCV: its name is not valid UTF-8; rename it.")
  if capture.isOpened():
    return file, capture
  empty = os.fstat(file.fileno()).st_size == 0
  file.close()
  if empty:
    raise decode.empty_file_error(path)
  raise decode.UnreadableImageError(f"{path} cannot be opened as a video by OpenCV: it is likely truncated or not a "
                                    "video. Re-copy or re-encode it (to MP4, say), or remove it.")
