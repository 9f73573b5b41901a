"""configs/dan.py's config for the same argument (rafdb, affectnet7, affectnet8, synthetic; ",occlusion=yes" with
synthetic) trained with a schedule of yours (examples/my_optim.py; docs/extending.md): a linear warm-up over
config.optimizer.warmup_epochs (1 here) from config.optimizer.warmup_start_factor (0.1) times the base rate, then
cosine annealing to 0. --config.optimizer.warmup_epochs=2 changes it; --config.optimizer.name=lion trains with
my_optim's Lion instead of the paper's optimiser.

Run from this folder, where `my_optim` is importable:

  cd examples && python -m fer_jax.main --config=warmup_cosine_config.py:synthetic --workdir=/tmp/dan_warmup
"""

import my_optim  # noqa: F401  (registers warmup_cosine and lion)

from fer_jax import config_lib

DAN = config_lib.paper_config("dan")  # configs/dan.py, read as --config reads a config file
SETTINGS, DATA_SETS, OPTIONS = DAN.SETTINGS, DAN.DATA_SETS, DAN.OPTIONS


def get_config(arg: str = "synthetic"):
  config_lib.parse_arg(arg, __file__, SETTINGS, **OPTIONS)  # a bad argument is named as one of this file's
  config = DAN.get_config(arg)
  config_lib.parse_arg(arg, __file__, SETTINGS, **OPTIONS)  # again: a --config.occlusion hint names this file
  config.optimizer.update(schedule="warmup_cosine", warmup_epochs=1, warmup_start_factor=0.1)
  return config
