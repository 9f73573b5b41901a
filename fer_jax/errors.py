"""The one base class of errors caused by what the user gave: a file, a flag or a config key.

Every command prints such an error as its message alone and exits with `USER_ERROR_STATUS`
(`fer_jax.cli.run`); any other exception is a bug and keeps its traceback. Messages name
the file or key and say what to do.
"""

USER_ERROR_STATUS = 2


class UserError(Exception):
  """A problem with the user's input, explained in the message (what, where, the fix)."""


class ConfigError(UserError, ValueError):
  """A config value, or a combination of values, that cannot work."""
