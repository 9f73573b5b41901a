"""One config file per method: `get_config(arg)` reads "<data set>[,<option>=<value>…]" with
`fer_jax.config_lib.parse_arg`, from the file's `DATA_SETS` and `OPTIONS` (each option's values; the tests
build every combination). Pass a file to any command as `--config=configs/dan.py:rafdb`."""
