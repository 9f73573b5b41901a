"""TFDS builders of fer_jax; importing this package registers them with TFDS.

`MANUAL` is the one list of fer_jax's sets prepared from the owners' downloads (`fer_jax.data.prepare` builds
them; `fer_jax.data.decode` reads their `CHANNELS`); the synthetic set is generated on first use."""

from fer_jax import config_lib
from fer_jax.data.builders import affectnet
from fer_jax.data.builders import fedro
from fer_jax.data.builders import fer2013
from fer_jax.data.builders import ferplus
from fer_jax.data.builders import rafdb
from fer_jax.data.builders import sfew
from fer_jax.data.builders import synthetic

MANUAL = {builder.name: builder for builder in (fer2013.Fer2013, ferplus.Ferplus, rafdb.Rafdb, affectnet.Affectnet,
                                                sfew.Sfew, fedro.Fedro)}
ALL = {**MANUAL, synthetic.Synthetic.name: synthetic.Synthetic}
NAMES = tuple(ALL)


def nearest(name: str, builder_classes=MANUAL) -> str:
  """" (did you mean rafdb/aligned224?)" for a misspelt set name ("rafdb_aligned224", "raf-db"), among the sets of
  `builder_classes` and their variants; "" where none is near."""
  choices = [*builder_classes, *(f"{set_name}/{variant}" for set_name, builder in builder_classes.items()
                                 for variant in builder.builder_configs)]
  return config_lib.did_you_mean(name.lower(), choices, cutoff=0.8)
