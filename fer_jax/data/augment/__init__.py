"""Device-side preprocessing and augmentation, spelled as pipeline strings in the configs.

`parse(text, size)` compiles a string (see `core`; `with_size` writes it as it runs); the ops live in `basic` (flip, channel and
value conversions, random_apply), `geometry` (resizes, rotations, crops, affine warps, the
Keras generator), `color` (colour jitter, grayscale, random erasing) and `occlusion` (synthetic
occluders placed from the face geometry, for robustness evaluation).
"""

from fer_jax.data.augment import basic, color, geometry, occlusion  # noqa: F401  (register the ops)
from fer_jax.data.augment.core import (OPS, Op, Pipeline, evaluation_keys, example_keys, parse, quantize, register,
                                      split_stages, with_size)

__all__ = ["OPS", "Op", "Pipeline", "evaluation_keys", "example_keys", "parse", "quantize", "register", "split_stages",
           "with_size"]
