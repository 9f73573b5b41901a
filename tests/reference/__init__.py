"""Reference implementations the tests compare fer_jax against, one module per method.

PyTorch (and Keras-layout) networks written from docs/methods/ with the official module and
layer names, so their state dicts and files have the released checkpoints' keys:
dan, apvit, lhcnet, scan_cci; `common` holds what they share. `datasets` writes tiny copies of
the FER data sets in their owners' file layouts.
"""
