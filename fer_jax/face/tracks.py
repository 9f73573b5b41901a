"""The faces of a video's consecutive frames followed as tracks, their probabilities smoothed over time."""

from typing import NamedTuple

import numpy as np


class _Seen(NamedTuple):
  """A track where it was last classified: its box, smoothed probabilities and the frame's index in the video."""
  track: int
  box: list
  probabilities: np.ndarray
  frame: int


class Tracks:
  """Faces of consecutive processed frames of one video matched to the tracks seen before (greedy, closest first):
  a face whose centre lies within MOVE_PER_FRAME box sides a video frame since the track's last face (at least
  MIN_MOVE, at most MAX_MOVE sides: a face moving across the picture stays on its track at --stride=5 as at 1), of a
  size within MAX_SCALE of it; each track's probabilities are an exponential moving average whose past weighs
  `weight` per frame of the video (the rows' "frame"): weight**n after n frames, so that --stride, or frames where
  the face was missed, leave the smoothing's span in the video as it is (with 0, the frame's own). A track not
  matched in a frame (its face not found or not classified) is kept for up to MAX_MISSED processed frames, then
  ended; `follow` is given every processed frame, those without a face (`rows` empty) included."""

  MOVE_PER_FRAME, MIN_MOVE, MAX_MOVE = 0.15, 0.5, 1.5
  MAX_SCALE = 1.5
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
      costs = self._costs(np.array([row["box"] for row in classified]), classified[0]["frame"])
      for flat in np.argsort(costs, axis=None):
        i, j = np.unravel_index(flat, costs.shape)
        if costs[i, j] > 1:
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

  def _costs(self, boxes: np.ndarray, frame: int) -> np.ndarray:
    """[face now, track]: how far each face's centre lies from each track's last one, over the move the frames
    between allow (a match is ≤ 1); infinite for sizes too far apart."""
    before = np.array([seen.box for seen in self.previous])
    sides = [np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) for b in (boxes, before)]
    centres = [(b[:, :2] + b[:, 2:]) / 2 for b in (boxes, before)]
    frames = frame - np.array([seen.frame for seen in self.previous])
    allowed = np.clip(self.MOVE_PER_FRAME * frames, self.MIN_MOVE, self.MAX_MOVE) * sides[1]
    costs = np.linalg.norm(centres[0][:, None] - centres[1][None], axis=-1) / allowed[None]
    scale = sides[0][:, None] / sides[1][None]
    return np.where((scale > self.MAX_SCALE) | (scale < 1 / self.MAX_SCALE), np.inf, costs)
