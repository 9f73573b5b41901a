"""One config file per method: `get_config(arg)` reads "<data set>[,<option>=<value>…]" with
`fer_jax.config_lib.parse_arg`, from the file's `SETTINGS` (each data set's settings, applied over those every
data set shares; `DATA_SETS` names them) and `OPTIONS` (each option's values; the tests build every
combination). Pass a file to any command as `--config=configs/dan.py:rafdb`."""
