"""Reference implementations the tests compare fer_jax against, one module per method.

PyTorch (and Keras-layout) networks written from docs/methods/ with the official module and
layer names, so their state dicts and files have the released checkpoints' keys:
dan, apvit, lhcnet, scan_cci; `common` holds what they share. `datasets` writes tiny copies of
the FER data sets in their owners' file layouts. `one_step` runs fer_jax's training step next to
PyTorch's and compares them in float64; `official_one_step` is its command-line run against the
official DAN and SCAN-CCI code (docs/fidelity.md).
"""
