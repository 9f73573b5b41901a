"""fer_jax: faithful JAX/Flax reimplementations of four facial expression recognition methods.

`fer_jax.load(path)` returns a model to classify faces with (see fer_jax.api)."""

from fer_jax import starting

starting.handle_ctrl_c_from_the_start()


def load(path: str, config=None, tta: str = "", batch_size: int = 64):
  """A trained, converted or exported model at `path` as a `fer_jax.api.Model`; its errors name a config change
  as the Python statement to make (`config.input.size = 32`), not as a command's flag."""
  from fer_jax import api  # pylint: disable=import-outside-toplevel  (importing fer_jax stays light)
  from fer_jax import errors  # pylint: disable=import-outside-toplevel
  with errors.python_caller():
    return api.load(path, config=config, tta=tta, batch_size=batch_size)
