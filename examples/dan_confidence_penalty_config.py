"""DAN with a confidence penalty added to its loss (examples/my_methods/dan_confidence_penalty.py; docs/extending.md):
configs/dan.py's config for the same argument (rafdb, affectnet7, affectnet8, synthetic; ",occlusion=yes" with
synthetic), with config.model.name = "my_methods.dan_confidence_penalty" and config.loss.confidence_penalty, the
penalty's weight (0.1 here; --config.loss.confidence_penalty=0.3 changes it).

Run from this folder, where `my_methods` is importable:

  cd examples && python -m fer_jax.main --config=dan_confidence_penalty_config.py:synthetic --workdir=/tmp/dan_penalty
"""

from fer_jax import config_lib

DAN = config_lib.paper_config("dan")  # configs/dan.py, read as --config reads a config file
SETTINGS, DATA_SETS, OPTIONS = DAN.SETTINGS, DAN.DATA_SETS, DAN.OPTIONS
CONFIDENCE_PENALTY = 0.1


def get_config(arg: str = "synthetic"):
  config_lib.parse_arg(arg, __file__, SETTINGS, **OPTIONS)  # a bad argument is named as one of this file's
  config = DAN.get_config(arg)
  config_lib.parse_arg(arg, __file__, SETTINGS, **OPTIONS)  # again: a --config.occlusion hint names this file
  config.model.name = "my_methods.dan_confidence_penalty"
  config.loss.confidence_penalty = CONFIDENCE_PENALTY
  return config
