"""Records TensorFlow's own output for LHC-Net's training-image resize (tests/test_lhcnet.py reads it).

The official ETL.py resizes each 48×48 grey FER2013 face to 224² with `tf.image.resize` (bilinear, no
antialiasing) in float32 and floors it before the JPEG round trip (fer_jax/data/jpeg_round_trip.py); the floor turns
TF's last bit into a grey level, so the test compares ours with TF's floored pixels exactly. Runs in a TensorFlow
environment (TensorFlow is no dependency of fer_jax):

  python3 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu pillow
  /tmp/tf/bin/python tests/reference/record_tf_resize.py --out=tests/fixtures/tf_resize_224.npz

Writes `images` (uint8 [N, 48, 48, 1]: a rendered face, uniform noise, a ramp, a checkerboard), `floored` (uint8
[N, 224, 224, 1], np.floor of TF's float32 output) and `tensorflow` (its version).
"""

import argparse

import numpy as np
import tensorflow as tf


def inputs() -> np.ndarray:
  rng = np.random.default_rng(2026)
  yy, xx = np.mgrid[:48, :48]
  face = 120 + 90 * np.exp(-((yy - 24) ** 2 + (xx - 24) ** 2) / 300) - 70 * (((yy - 18) ** 2 + (xx - 16) ** 2) < 12) \
      - 70 * (((yy - 18) ** 2 + (xx - 32) ** 2) < 12) - 60 * ((np.abs(yy - 34) < 2) & (np.abs(xx - 24) < 9))
  noise = rng.integers(0, 256, (48, 48))
  ramp = (xx * 5 + yy * 0.3) % 256
  checker = 255 * ((yy + xx) % 2)
  return np.stack([face, noise, ramp, checker]).clip(0, 255).astype(np.uint8)[..., None]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  images = inputs()
  resized = tf.image.resize(tf.constant(images, tf.float32), (224, 224), method="bilinear", antialias=False)
  np.savez_compressed(parser.parse_args().out, images=images, floored=np.floor(resized.numpy()).astype(np.uint8),
                      tensorflow=tf.__version__)


if __name__ == "__main__":
  main()
