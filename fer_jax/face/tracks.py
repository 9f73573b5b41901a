"""The faces of a video's consecutive frames followed as tracks, their probabilities smoothed over time."""

import numpy as np

from fer_jax.face import detector


class Tracks:
  """Faces of consecutive processed frames of one video matched by box overlap (greedy, best
  IoU first, over TRACK_IOU); each track's probabilities are an exponential moving average (the
  past weighing `weight`: with 0, the frame's own). A track not matched in a frame (its face not found or not
  classified) is kept for up to MAX_MISSED processed frames, then ended."""

  TRACK_IOU = 0.3
  MAX_MISSED = 25

  def __init__(self):
    self.video, self.previous, self.next_id, self.missed = None, [], 0, {}

  def follow(self, video: str, rows: list[dict], weight: float, class_names) -> None:
    if video != self.video:
      self.video, self.previous, self.missed = video, [], {}
    classified = [row for row in rows if not row["skipped"]]
    if not classified:
      return  # as after a frame without a face: a face too small or unsure for a frame keeps its track
    current = [None] * len(classified)
    if self.previous:
      boxes_now, boxes_before = np.array([r["box"] for r in classified]), np.array([b for _, b, _ in self.previous])
      overlaps = detector.iou_matrix(boxes_now, boxes_before)
      for flat in np.argsort(-overlaps, axis=None):
        i, j = np.unravel_index(flat, overlaps.shape)
        if overlaps[i, j] <= self.TRACK_IOU:
          break
        if current[i] is None and all(c is None or c[0] != self.previous[j][0] for c in current):
          current[i] = self.previous[j]
    tracks = []
    for row, match in zip(classified, current):
      probabilities = np.array([row["probabilities"][c] for c in class_names])
      if match is None:
        track, self.next_id = self.next_id, self.next_id + 1
      else:
        track, probabilities = match[0], weight * match[2] + (1 - weight) * probabilities
      top = int(np.argmax(probabilities))
      row.update(track=track, prediction=class_names[top], confidence=float(probabilities[top]),
                 probabilities=dict(zip(class_names, map(float, probabilities))))
      tracks.append((track, row["box"], probabilities))
    matched = {match[0] for match in current if match is not None}
    self.missed = {track: 0 for track, _, _ in tracks} | {
        track: self.missed.get(track, 0) + 1 for track, _, _ in self.previous if track not in matched}
    self.previous = tracks + [kept for kept in self.previous
                              if kept[0] not in matched and self.missed[kept[0]] <= self.MAX_MISSED]
