"""The faces of a video's consecutive frames followed as tracks, their probabilities smoothed over time."""

from typing import NamedTuple

import numpy as np
from scipy import optimize


class _Seen(NamedTuple):
  """A track where it was last classified: its box, smoothed probabilities, the frame's index in the video, and its
  centre's move a video frame (pixels; 0 for a new track)."""
  track: int
  box: list
  probabilities: np.ndarray
  frame: int
  velocity: np.ndarray = np.zeros(2)


def _centres_and_sides(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return (boxes[:, :2] + boxes[:, 2:]) / 2, np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


class Tracks:
  """Faces of consecutive processed frames of one video matched to the tracks seen before, by the least total cost
  (scipy's linear_sum_assignment): a face whose centre lies within MOVE_PER_FRAME box sides a video frame of where
  the track's last face would be at its speed (at least MIN_MOVE, at most MAX_MOVE sides), of a size within
  SCALE_PER_FRAME a frame of it (at least MIN_SCALE): a face crossing the picture stays on its track at --stride=10 as
  at 1, and two faces side by side keep their own. Each track's probabilities are an exponential moving average whose
  past weighs `weight` per frame of the video (the rows' "frame"): weight**n after n frames, so that --stride, or
  frames where the face was missed, leave the smoothing's span in the video as it is (with 0, the frame's own). A
  track not matched in a frame (its face not found or not classified) is kept for up to MAX_MISSED processed frames,
  then ended; `follow` is given every processed frame, those without a face (`rows` empty) included."""

  MOVE_PER_FRAME, MIN_MOVE, MAX_MOVE = 0.15, 0.5, 3.0
  SCALE_PER_FRAME, MIN_SCALE = 1.12, 1.5
  MAX_MISSED = 25
  UNMATCHED = 1e6  # the assignment's cost of a pair too far apart, which is then not matched

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
      for i, j in zip(*optimize.linear_sum_assignment(np.minimum(costs, self.UNMATCHED))):
        if costs[i, j] <= 1:
          current[i] = self.previous[j]
    tracks = []
    for row, match in zip(classified, current):
      probabilities = np.array([row["probabilities"][c] for c in class_names])
      velocity = np.zeros(2)
      if match is None:
        track, self.next_id = self.next_id, self.next_id + 1
      else:
        frames = row["frame"] - match.frame
        past = weight ** frames
        track, probabilities = match.track, past * match.probabilities + (1 - past) * probabilities
        (now, before), _ = _centres_and_sides(np.array([row["box"], match.box], float))
        velocity = (now - before) / max(frames, 1)
      top = int(np.argmax(probabilities))
      row.update(track=track, prediction=class_names[top], confidence=float(probabilities[top]),
                 probabilities=dict(zip(class_names, map(float, probabilities))))
      tracks.append(_Seen(track, row["box"], probabilities, row["frame"], velocity))
    matched = {match.track for match in current if match is not None}
    self.missed = {seen.track: 0 for seen in tracks} | {
        seen.track: self.missed.get(seen.track, 0) + 1 for seen in self.previous if seen.track not in matched}
    self.previous = tracks + [seen for seen in self.previous
                              if seen.track not in matched and self.missed[seen.track] <= self.MAX_MISSED]

  def _costs(self, boxes: np.ndarray, frame: int) -> np.ndarray:
    """[face now, track]: how far each face's centre lies from where each track's would be at its speed, over the move
    the frames between allow (a match is ≤ 1); infinite for sizes too far apart."""
    (centres, sides), (before, sides_before) = (_centres_and_sides(b) for b in (
        boxes, np.array([seen.box for seen in self.previous], float)))
    frames = frame - np.array([seen.frame for seen in self.previous])
    expected = before + np.array([seen.velocity for seen in self.previous]) * frames[:, None]
    allowed = np.clip(self.MOVE_PER_FRAME * frames, self.MIN_MOVE, self.MAX_MOVE) * sides_before
    costs = np.linalg.norm(centres[:, None] - expected[None], axis=-1) / allowed[None]
    scale = np.abs(np.log(sides[:, None] / sides_before[None]))
    return np.where(scale > np.log(np.maximum(self.MIN_SCALE, self.SCALE_PER_FRAME ** frames))[None], np.inf, costs)
