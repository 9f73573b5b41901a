"""Procedural face-like images for the 7 basic expressions (fer2013 class order).

Each expression is a prototype of facial geometry (mouth curve, opening and width; brow
height and tilt; eye opening; nose wrinkles), drawn with per-example jitter so classes
overlap a little, then disturbed by nuisances a pixel-linear model cannot undo: pose
(rotation, yaw squash), scale, position, skin and background tones, lighting gradients,
noise and a random occluder. Everything follows from the generator passed in.
"""

import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fer_jax.data import labels


@dataclasses.dataclass(frozen=True)
class Expression:
  mouth_curve: float    # + smile, − frown (fraction of face height)
  mouth_open: float     # opening height (fraction of face height)
  mouth_width: float    # fraction of face width
  brow_raise: float     # + up (fraction of face height)
  brow_tilt: float      # degrees; + inner ends down (anger), − inner ends up (sadness/fear)
  eye_open: float       # eye height relative to neutral
  wrinkle: float = 0.0  # nose wrinkles (disgust)
  asymmetry: float = 0.0  # one-sided upper-lip raise (disgust)


PROTOTYPES = {
    labels.ANGER: Expression(-0.02, 0.0, 0.34, -0.03, 22, 0.75),
    labels.DISGUST: Expression(-0.03, 0.015, 0.36, -0.02, 8, 0.6, wrinkle=1.0, asymmetry=0.05),
    labels.FEAR: Expression(-0.01, 0.04, 0.46, 0.05, -16, 1.45),
    labels.HAPPINESS: Expression(0.09, 0.03, 0.5, 0.0, 0, 0.8),
    labels.SADNESS: Expression(-0.07, 0.0, 0.38, 0.0, -20, 0.85),
    labels.SURPRISE: Expression(0.0, 0.14, 0.26, 0.09, -4, 1.55),
    labels.NEUTRAL: Expression(0.0, 0.0, 0.4, 0.0, 0, 1.0),
}
CLASSES = labels.CLASS_ORDERS["fer2013"]
CANVAS = 128
U = CANVAS / 256  # drawing constants below are in 256-pixel units


def _jitter(expression: Expression, rng: np.random.Generator) -> Expression:
  noise = dict(mouth_curve=0.018, mouth_open=0.01, mouth_width=0.05, brow_raise=0.015,
               brow_tilt=5.0, eye_open=0.15, wrinkle=0.2, asymmetry=0.015)
  values = {k: getattr(expression, k) + rng.normal(0, s) for k, s in noise.items()}
  values["mouth_open"] = max(values["mouth_open"], 0.0)
  values["eye_open"] = max(values["eye_open"], 0.25)
  return Expression(**values)


def _curve(cx, cy, half_width, bend, lift=0.0, n=16):
  """Polyline of a parabola through the mouth corners; bend > 0 lifts the corners."""
  xs = np.linspace(-1, 1, n)
  return [(cx + x * half_width, cy - bend * x * x - lift * max(x, 0)) for x in xs]


def _draw_face(draw: ImageDraw.ImageDraw, e: Expression, skin, feature, rng):
  c = CANVAS / 2
  face_w, face_h = 190 * U * rng.uniform(0.92, 1.08), 230 * U * rng.uniform(0.94, 1.06)
  draw.ellipse([c - face_w / 2, c - face_h / 2, c + face_w / 2, c + face_h / 2], fill=skin)
  eye_y, eye_dx = c - 0.12 * face_h, 0.2 * face_w
  eye_w, eye_h = 0.16 * face_w, 0.06 * face_h * e.eye_open
  for side in (-1, 1):
    ex = c + side * eye_dx
    draw.ellipse([ex - eye_w / 2, eye_y - eye_h / 2, ex + eye_w / 2, eye_y + eye_h / 2],
                 fill=(245, 245, 245))
    pupil = min(eye_h, eye_w) * 0.45
    draw.ellipse([ex - pupil, eye_y - pupil, ex + pupil, eye_y + pupil], fill=feature)
    brow_y = eye_y - 0.09 * face_h - e.brow_raise * face_h
    tilt = np.tan(np.radians(e.brow_tilt)) * 0.5 * eye_w
    inner, outer = ex - side * 0.6 * eye_w, ex + side * 0.6 * eye_w
    draw.line([(inner, brow_y + tilt), (outer, brow_y - tilt)], fill=feature, width=max(1, round(10 * U)))
  mouth_y, half = c + 0.25 * face_h, 0.5 * e.mouth_width * face_w
  bend = e.mouth_curve * face_h
  upper = _curve(c, mouth_y - e.mouth_open * face_h / 2, half, bend, e.asymmetry * face_h)
  lower = _curve(c, mouth_y + e.mouth_open * face_h / 2, half, bend)
  if e.mouth_open > 0.01:
    draw.polygon(upper + lower[::-1], fill=(90, 20, 30))
  draw.line(upper, fill=feature, width=max(1, round(8 * U)))
  draw.line(lower, fill=feature, width=max(1, round(8 * U)))
  nose_y = c + 0.05 * face_h
  draw.line([(c, eye_y + 10 * U), (c - 8 * U, nose_y), (c + 6 * U, nose_y)], fill=feature, width=max(1, round(3 * U)))
  for k in range(int(round(3 * max(e.wrinkle, 0)))):
    y = eye_y + (14 + 7 * k) * U
    draw.line([(c - 18 * U, y), (c - 6 * U, y + 3 * U)], fill=feature, width=max(1, round(3 * U)))
    draw.line([(c + 6 * U, y + 3 * U), (c + 18 * U, y)], fill=feature, width=max(1, round(3 * U)))


def render(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
  """A size×size×3 uint8 face of class `label` (index into the fer2013 order)."""
  expression = _jitter(PROTOTYPES[CLASSES[label]], rng)
  background = tuple(int(v) for v in rng.integers(0, 256, 3))
  tone = rng.uniform(0.35, 1.0)
  skin = tuple(int(v) for v in np.array([235, 190, 160]) * tone + rng.integers(-20, 20, 3))
  feature = tuple(int(v) for v in rng.integers(0, 70, 3))
  image = Image.new("RGB", (CANVAS, CANVAS), background)
  _draw_face(ImageDraw.Draw(image), expression, skin, feature, rng)
  image = _pose(image, rng, background)
  image = _occlude(image, rng)
  image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5) * U)).resize((size, size), Image.BILINEAR)
  return _light_and_noise(np.asarray(image, np.float32), rng)


def _pose(image: Image.Image, rng, background) -> Image.Image:
  yaw = rng.uniform(0.85, 1.0)
  scale = rng.uniform(0.85, 1.05)
  shift = rng.uniform(-0.06, 0.06, 2) * CANVAS
  image = image.rotate(rng.uniform(-12, 12), Image.BILINEAR, fillcolor=background)
  a, e = 1 / (scale * yaw), 1 / scale
  c = CANVAS / 2
  coefficients = (a, 0, c - a * (c + shift[0]), 0, e, c - e * (c + shift[1]))
  return image.transform(image.size, Image.AFFINE, coefficients, Image.BILINEAR, fillcolor=background)


def _occlude(image: Image.Image, rng) -> Image.Image:
  if rng.random() < 0.25:
    draw = ImageDraw.Draw(image)
    w, h = rng.uniform(0.1, 0.25, 2) * CANVAS
    x, y = rng.uniform(0, CANVAS - w), rng.uniform(0.2 * CANVAS, CANVAS - h)
    draw.rectangle([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
  return image


def _light_and_noise(pixels: np.ndarray, rng) -> np.ndarray:
  size = pixels.shape[0]
  direction = rng.normal(size=2)
  ramp = (np.linspace(-1, 1, size)[:, None] * direction[0] + np.linspace(-1, 1, size)[None] * direction[1])
  gain = rng.uniform(0.6, 1.3) * (1 + 0.25 * ramp / max(np.abs(direction).sum(), 1e-6))
  pixels = pixels * gain[..., None] + rng.uniform(-30, 30) + rng.normal(0, rng.uniform(2, 12), pixels.shape)
  return np.clip(pixels, 0, 255).astype(np.uint8)
