"""Faces drawn on a photo or video frame: boxes, landmarks and labels, written as PNGs named after the input."""

import hashlib
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont


def draw_faces(image: np.ndarray, rows: list[dict], path: str) -> None:
  """The photo with each face's box, landmarks and label (or why it was skipped), as a PNG."""
  picture = Image.fromarray(image)
  pen = ImageDraw.Draw(picture)
  width = max(2, round(max(image.shape[:2]) / 300))
  font = ImageFont.load_default(size=6 * width + 4)
  for row in rows:
    colour = (160, 160, 160) if row["skipped"] else (0, 220, 0)
    x1, y1, x2, y2 = row["box"]
    pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
    for x, y in row["landmarks"]:
      pen.ellipse((x - width, y - width, x + width, y + width), fill=(255, 60, 60))
    label = f"{row['prediction']} {row['confidence']:.2f}" if not row["skipped"] else "skipped"
    x, y = _label_place(pen, label, font, (x1, y1), picture.size, width)
    left, top, right, bottom = pen.textbbox((x, y), label, font=font, anchor="lb")
    pen.rectangle((left, top - width, right + 2 * width, bottom), fill=colour)
    pen.text((x + width, y), label, fill=(0, 0, 0), font=font, anchor="lb")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  picture.save(path)


def _label_place(pen: ImageDraw.ImageDraw, label: str, font, corner: tuple[float, float], size: tuple[int, int],
                 margin: int) -> tuple[float, float]:
  """Where a label's left end and baseline go: above the box's top-left `corner`, or just inside the box where the
  photo has no room above it (a face cut by the top edge: MTCNN's boxes pass the photo's edges), kept within the
  photo's width."""
  left, top, right, bottom = pen.textbbox((0, 0), label, font=font, anchor="lb")
  x1, y1 = corner
  x = min(max(x1, 0), max(size[0] - (right - left) - 2 * margin, 0))
  y = y1 if y1 + top - margin >= 0 else max(y1, 0) - top + margin
  return x, y


MAX_NAME_BYTES = 255  # the longest file name Linux's and macOS's file systems take, in bytes


def drawing_name(name: str) -> str:
  """`name` + ".png"; where its last part would pass `MAX_NAME_BYTES` in UTF-8, that part cut short and ended by a hash
  of `name`, which keeps it apart from the others."""
  folder, base = os.path.split(name)
  if len(os.fsencode(base + ".png")) <= MAX_NAME_BYTES:
    return name + ".png"
  ending = f"~{hashlib.sha256(os.fsencode(name)).hexdigest()[:10]}.png"
  while len(os.fsencode(base + ending)) > MAX_NAME_BYTES:
    base = base[:-1]
  return os.path.join(folder, base + ending)
