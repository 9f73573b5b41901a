"""A method of yours (examples/my_methods/plain_resnet.py) on fer_jax's data and loop (docs/extending.md).

  synthetic   the built-in synthetic faces at 72×72, from scratch.

Run from this folder, where `my_methods` is importable:

  cd examples && python -m fer_jax.main --config=plain_resnet_config.py:synthetic --workdir=/tmp/plain_resnet
"""

from fer_jax import config_lib

NORMALIZE = "normalize('imagenet')"


def _synthetic(config) -> None:
  config.dataset.update(name="synthetic", class_order="fer2013")
  config.input.update(size=72, train_pp=f"resize({{size}})|flip()|{NORMALIZE}", eval_pp=f"resize({{size}})|{NORMALIZE}")


# The arguments: each data set's settings, applied over those every data set shares (get_config).
SETTINGS = {"synthetic": _synthetic}
DATA_SETS = tuple(SETTINGS)


def get_config(arg: str = "synthetic"):
  data = config_lib.parse_arg(arg, __file__, SETTINGS).data
  config = config_lib.base_config()
  config.model.update(name="my_methods.plain_resnet", num_classes=7)
  config.loss.label_smoothing = 0.1
  config.batch_size, config.eval_batch_size, config.num_epochs = 32, 250, 2
  config.optimizer.update(name="adam", lr=1e-3, schedule="cosine", grad_clip_norm=1.0)
  SETTINGS[data](config)
  return config
