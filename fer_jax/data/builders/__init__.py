"""TFDS builders of fer_jax; importing this package registers them with TFDS.

`MANUAL` is the one list of fer_jax's sets prepared from the owners' downloads (`fer_jax.data.prepare` builds
them; `fer_jax.data.decode` reads their `CHANNELS`); the synthetic set is generated on first use."""

from fer_jax.data.builders import affectnet
from fer_jax.data.builders import fedro
from fer_jax.data.builders import fer2013
from fer_jax.data.builders import ferplus
from fer_jax.data.builders import rafdb
from fer_jax.data.builders import sfew
from fer_jax.data.builders import synthetic

MANUAL = {builder.name: builder for builder in (fer2013.Fer2013, ferplus.Ferplus, rafdb.Rafdb, affectnet.Affectnet,
                                                sfew.Sfew, fedro.Fedro)}
NAMES = (*MANUAL, synthetic.Synthetic.name)
