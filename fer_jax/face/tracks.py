"""The faces of a video's consecutive frames followed as tracks, their probabilities smoothed over time."""

from typing import NamedTuple

import numpy as np

from fer_jax.face import detector


class _Seen(NamedTuple):
  """A track where it was last classified: its box, smoothed probabilities and the frame's index in the video."""
  track: int
  box: list
  probabilities: np.ndarray
  frame: int


class Tracks:
  """Faces of consecutive processed frames of one video matched by box overlap (greedy, best
  IoU first, over TRACK_IOU); each track's probabilities are an exponential moving average whose past weighs
  `weight` per frame of the video (the rows' "frame"): weight**n after n frames, so that --stride, or frames where
  the face was missed, leave the smoothing's span in the video as it is (with 0, the frame's own). A track not
  matched in a frame (its face not found or not classified) is kept for up to MAX_MISSED processed frames, then
  ended; `follow` is given every processed frame, those without a face (`rows` empty) included."""

  TRACK_IOU = 0.3
  MAX_MISSED = 25

  def __init__(self):
    self.video, self.previous, self.next_id, self.missed = None, [], 0, {}

  def follow(self, video: str, rows: list[dict], weight: float, class_names) -> None:
    if video != self.video:
      self.video, self.previous, self.missed = video, [], {}
    # A frame without a classified face ends no track at once: it counts as missed for each.
    classified = [row for row in rows if not row["skipped"]]
    current = [None] * len(classified)
    if self.previous and classified:
      boxes_now = np.array([row["box"] for row in classified])
      boxes_before = np.array([seen.box for seen in self.previous])
      overlaps = detector.iou_matrix(boxes_now, boxes_before)
      for flat in np.argsort(-overlaps, axis=None):
        i, j = np.unravel_index(flat, overlaps.shape)
        if overlaps[i, j] <= self.TRACK_IOU:
          break
        if current[i] is None and all(c is None or c.track != self.previous[j].track for c in current):
          current[i] = self.previous[j]
    tracks = []
    for row, match in zip(classified, current):
      probabilities = np.array([row["probabilities"][c] for c in class_names])
      if match is None:
        track, self.next_id = self.next_id, self.next_id + 1
      else:
        past = weight ** (row["frame"] - match.frame)
        track, probabilities = match.track, past * match.probabilities + (1 - past) * probabilities
      top = int(np.argmax(probabilities))
      row.update(track=track, prediction=class_names[top], confidence=float(probabilities[top]),
                 probabilities=dict(zip(class_names, map(float, probabilities))))
      tracks.append(_Seen(track, row["box"], probabilities, row["frame"]))
    matched = {match.track for match in current if match is not None}
    self.missed = {seen.track: 0 for seen in tracks} | {
        seen.track: self.missed.get(seen.track, 0) + 1 for seen in self.previous if seen.track not in matched}
    self.previous = tracks + [seen for seen in self.previous
                              if seen.track not in matched and self.missed[seen.track] <= self.MAX_MISSED]
