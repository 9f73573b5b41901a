"""A schedule and an optimiser of yours (docs/extending.md, "A schedule or an optimiser of yours"), registered when
this module is imported: a config file imports it, then names them in config.optimizer.

warmup_cosine: the rate rises linearly for config.optimizer.warmup_epochs epochs from
config.optimizer.warmup_start_factor times the base rate, then anneals to 0 by a half cosine over the epochs left, as
torch's LinearLR followed by CosineAnnealingLR (SequentialLR) stepped at epoch ends.

lion: optax's Lion, whose weight decay is decoupled (applied by the rule itself, to the parameters the decay mask
marks), with config.optimizer's b1 and b2.
"""

import jax.numpy as jnp
import optax

from fer_jax import optim


@optim.register_schedule(keys=("warmup_epochs", "warmup_start_factor"))
def warmup_cosine(epoch, opt_config, num_epochs):
  warmup, start = opt_config.warmup_epochs, opt_config.warmup_start_factor
  epoch = epoch.astype(float)
  rising = start + (1 - start) * epoch / max(warmup, 1)
  annealing = 0.5 * (1 + jnp.cos(jnp.pi * (epoch - warmup) / max(num_epochs - warmup, 1)))
  return jnp.where(epoch < warmup, rising, annealing)


@optim.register_optimizer(decoupled_weight_decay=True)
def lion(opt_config, learning_rate, decay_mask):
  return optax.lion(learning_rate, b1=opt_config.b1, b2=opt_config.b2, weight_decay=opt_config.weight_decay,
                    mask=decay_mask)
