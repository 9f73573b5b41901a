"""TFDS builders of fer_jax; importing this package registers them with TFDS."""

from fer_jax.data.builders import affectnet  # noqa: F401
from fer_jax.data.builders import fedro  # noqa: F401
from fer_jax.data.builders import fer2013  # noqa: F401
from fer_jax.data.builders import ferplus  # noqa: F401
from fer_jax.data.builders import rafdb  # noqa: F401
from fer_jax.data.builders import sfew  # noqa: F401
from fer_jax.data.builders import synthetic  # noqa: F401
