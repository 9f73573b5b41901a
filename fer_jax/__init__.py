"""fer_jax: faithful JAX/Flax reimplementations of four facial expression recognition methods."""
