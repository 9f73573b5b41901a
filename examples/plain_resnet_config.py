"""A method of yours (examples/my_methods/plain_resnet.py) on fer_jax's data and loop (docs/extending.md).

  synthetic   the built-in synthetic faces at 72×72, from scratch.

Run from this folder, where `my_methods` is importable:

  cd examples && python -m fer_jax.main --config=plain_resnet_config.py:synthetic --workdir=/tmp/plain_resnet
"""

from fer_jax import config_lib

DATA_SETS = ("synthetic",)
NORMALIZE = "normalize('imagenet')"


def get_config(arg: str = "synthetic"):
  config_lib.parse_arg(arg, __file__, DATA_SETS)
  config = config_lib.base_config()
  config.model.update(name="my_methods.plain_resnet", num_classes=7)
  config.loss.label_smoothing = 0.1
  config.dataset.update(name="synthetic", class_order="fer2013")
  config.input.update(size=72, train_pp=f"resize({{size}})|flip()|{NORMALIZE}", eval_pp=f"resize({{size}})|{NORMALIZE}")
  config.batch_size, config.eval_batch_size, config.num_epochs = 32, 250, 2
  config.optimizer.update(name="adam", lr=1e-3, schedule="cosine", grad_clip_norm=1.0)
  return config
