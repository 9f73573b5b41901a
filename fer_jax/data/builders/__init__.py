"""TFDS builders of fer_jax; importing this package registers them with TFDS."""

from fer_jax.data.builders import affectnet
from fer_jax.data.builders import fedro
from fer_jax.data.builders import fer2013
from fer_jax.data.builders import ferplus
from fer_jax.data.builders import rafdb
from fer_jax.data.builders import sfew
from fer_jax.data.builders import synthetic

NAMES = tuple(builder.name for builder in (fer2013.Fer2013, ferplus.Ferplus, rafdb.Rafdb, affectnet.Affectnet,
                                           sfew.Sfew, fedro.Fedro, synthetic.Synthetic))
